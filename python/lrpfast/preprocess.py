"""Photos -> network input, and back: :func:`preprocess` and :class:`Preprocessed`.

Caffe models expect ``float32 (3, H, W)`` planes in BGR order with values 0..255 minus a mean
pixel or mean image; PyTorch-style models expect RGB, values 0..1, minus a mean, divided by a
standard deviation. :func:`preprocess` does both from one description::

    x = (pixels * scale - mean) / std        # pixels: 0..255, in ``channel_order``

and records the geometry (resize factors, crop or pad offsets) so that boxes and heatmaps can be
mapped between the photo and the network input (:meth:`Preprocessed.boxes_to_input`,
:meth:`Preprocessed.boxes_to_photo`, :meth:`Preprocessed.to_photo`; boxes follow
:mod:`lrpfast.boxes`' convention).

Modes (``mode=``), for a network input of ``H x W``:

* ``"crop"`` (default): resize so that the photo covers ``H x W`` at the size ``base`` of the
  short side (default: just covering it), keeping the aspect ratio, then take the centre
  ``H x W`` (what ImageNet models are trained with: e.g. ``base=256`` then a 224 crop).
* ``"pad"``: the LRP toolbox's scheme: resize so that the *long* side is ``base`` (default
  ``max(H, W)``; short side ``floor(s * base / l + 0.5)``, at least 1), then per axis
  centre-crop a longer side (offset ``(len - S) // 2``) and pad a shorter one by repeating its
  edge pixels (``(S - len) // 2`` before, the rest after).
* ``"resize"``: resize to ``H x W``, ignoring the aspect ratio.

Resizing is Pillow's antialiased bilinear filter (:func:`resize_bilinear`), computed natively on
the part of the resized photo that the input keeps.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ._loader import _core

__all__ = ["preprocess", "Preprocessed", "MODES", "load_rgb", "resized_size", "resize_bilinear"]

def _bilinear():
    from PIL import Image
    return getattr(Image, "Resampling", Image).BILINEAR   # Pillow >= 9.1 / older


_BILINEAR = _bilinear()

#: The resize modes of :func:`preprocess`.
MODES = ("crop", "pad", "resize")


def _pil_rgb(image: Any):
    """A file path or PIL image -> the PIL image in RGB mode (decoded); other inputs -> None."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} not found")
        with Image.open(path) as im:
            _one_block(im)
            im.load()
            return im if im.mode == "RGB" else im.convert("RGB")   # no copy when RGB
    if isinstance(image, Image.Image):
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    return None


def _one_block(im) -> None:
    """Let an RGB photo that Pillow would split into several memory blocks (over 16 MB, e.g. a
    12 MP photo) decode into one (``Image.core.new_block``, Pillow >= 11.2), so that
    :func:`_pixels` reads it without a copy; a no-op otherwise."""
    from PIL import Image
    core = Image.core
    if (im.mode == "RGB" and hasattr(core, "new_block")
            and im.width * im.height * 4 > core.get_block_size()):
        im.im = core.new_block(im.mode, im.size)


def load_rgb(image: Any) -> np.ndarray:
    """Any supported image -> ``(h, w, 3) uint8`` RGB.

    Accepts a file path, a PIL image, a numpy array ``(h, w, 3)`` / ``(h, w, 4)`` / ``(h, w)``
    (uint8 0..255, or float 0..255) in RGB order, or a torch tensor ``(3, h, w)`` / ``(h, w)``
    in torchvision's layout (uint8 0..255, or float 0..1).
    """
    pil = _pil_rgb(image)
    if pil is not None:
        return np.asarray(pil, dtype=np.uint8)
    if type(image).__module__.startswith("torch"):     # a torch tensor: (3, h, w) or (h, w)
        t = image.detach().cpu()
        a = t.numpy()
        if a.ndim == 3:
            if a.shape[0] not in (1, 3):
                raise ValueError(f"a torch image must be (3, h, w) or (1, h, w) (torchvision's "
                                 f"layout); got shape {tuple(a.shape)}")
            a = a.transpose(1, 2, 0)
        if a.dtype.kind == "f":
            a = a * 255.0
        image = a
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"an image array must be (h, w, 3) RGB, (h, w, 4) or (h, w) grey; got "
                         f"shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"an image array must be numeric, got dtype {a.dtype}")
    f = a.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError("the image contains NaN or infinity")
    return np.clip(np.floor(f + 0.5), 0, 255).astype(np.uint8, order="C")


def resize_bilinear(pixels: np.ndarray, size: Tuple[int, int],
                    window: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """Pillow's antialiased bilinear resize of ``pixels`` (``(h, w, 3)`` or ``(h, w, 4)`` uint8,
    the first three channels used) to ``size = (H, W)``, computed natively and only on
    ``window = (y0, x0, ny, nx)`` (default: all) -> ``(ny, nx, 3)`` uint8.

    The bytes are those of ``Image.resize((W, H), BILINEAR)`` cropped to the window, with
    Pillow's classic two passes: horizontal first (rounded to 8 bits), then vertical, each
    skipped when that side keeps its size. Pillow 12 and older resize that way for every size;
    Pillow 13 resizes vertically first for some shapes (tall photos whose height shrinks more),
    which can move a pixel by one level there. lrpfast keeps one order, so a photo gives the
    same input on every machine whatever Pillow is installed.

    Filter (per axis, in -> out samples): ``scale = in / out``, ``s = max(scale, 1)``; output
    ``o`` is centred at ``c = (o + 0.5) * scale`` and takes the inputs ``i`` in
    ``[int(c - s + 0.5), int(c + s + 0.5))`` (clipped to the image) with weights
    ``max(0, 1 - |i - c + 0.5| / s)``, normalised to sum 1 and stored with 22 fractional bits
    (rounded half away from zero); a pass computes ``(2^21 + sum(pixel * weight)) >> 22``
    clipped to 0..255.
    """
    H, W = int(size[0]), int(size[1])
    y0, x0, ny, nx = (0, 0, H, W) if window is None else (int(v) for v in window)
    return _core.resize_bilinear(pixels, (H, W), (y0, x0, ny, nx))


def _pixels(img) -> np.ndarray:
    """A decoded RGB PIL image's pixels: ``(h, w, 4)`` uint8 without a copy where Pillow
    exports them (its Arrow interface, Pillow >= 11.2, image in one memory block), else
    ``(h, w, 3)``, a copy."""
    export = getattr(img, "__arrow_c_array__", None)
    if export is not None:
        try:
            schema, array = export()
            return _core.arrow_pixels(schema, array, img.height, img.width)
        except ValueError:   # rows in several blocks (very large photos)
            pass
    return np.asarray(img, dtype=np.uint8)


def resized_size(w: int, h: int, base: int) -> Tuple[int, int]:
    """(width, height) with the long side = base, the short side rounded half up (min 1)."""
    if w >= h:
        return base, max(1, math.floor(h * base / w + 0.5))
    return max(1, math.floor(w * base / h + 0.5)), base


def fit_axis(a: np.ndarray, axis: int, size: int) -> Tuple[np.ndarray, int]:
    """Centre-crop or edge-pad ``a`` along ``axis`` to ``size``; returns (array, offset) where
    offset > 0 is the crop start, < 0 minus the padding before."""
    n = a.shape[axis]
    if n > size:
        o = (n - size) // 2
        window = [slice(None)] * a.ndim
        window[axis] = slice(o, o + size)
        return a[tuple(window)], o
    if n < size:
        before = (size - n) // 2
        pad = [(0, 0)] * a.ndim
        pad[axis] = (before, size - n - before)
        return np.pad(a, pad, mode="edge"), -before
    return a, 0


def mean_region(mean, size: Sequence[int]) -> np.ndarray:
    """A mean as ``(C, H, W)``-broadcastable float32: a scalar, a ``(C,)`` vector (as
    ``(C, 1, 1)``) or the centre ``H x W`` region of a ``(C, Hm, Wm)`` mean image (offset
    ``(Hm - H) // 2``, ``(Wm - W) // 2``)."""
    m = np.asarray(mean, np.float32)
    H, W = int(size[0]), int(size[1])
    if m.ndim == 0:
        return m.reshape(1, 1, 1)
    if m.ndim == 1:
        return m[:, None, None]
    if m.ndim != 3:
        raise ValueError(f"mean must be a number, (C,) or (C, H, W); got shape {m.shape}")
    if m.shape[1:] == (1, 1):   # already a (C, 1, 1) vector
        return m
    if m.shape[1] < H or m.shape[2] < W:
        raise ValueError(f"mean image {m.shape[1]}x{m.shape[2]} is smaller than the net's input "
                         f"{H}x{W}")
    oy, ox = (m.shape[1] - H) // 2, (m.shape[2] - W) // 2
    return m[:, oy:oy + H, ox:ox + W]


@dataclass
class Preprocessed:
    """The result of :func:`preprocess`.

    Attributes
    ----------
    x : float32 (3, H, W)
        The network input (``net.relevance(p.x, ...)`` takes it as a batch of one;
        ``np.stack`` several).
    image : uint8 (H, W, 3)
        The RGB picture the net sees (after resizing and cropping/padding, before the mean):
        draw heatmaps over this one.
    photo_size : (h, w)
        Size of the original photo.
    scale : (sy, sx)
        Resize factors from the photo to the resized picture.
    offset : (oy, ox)
        Where the network input starts in the resized picture (negative: padding before).
    mode : str
        The resize mode used.
    """

    x: np.ndarray
    image: np.ndarray
    photo_size: Tuple[int, int]
    scale: Tuple[float, float]
    offset: Tuple[int, int]
    mode: str

    @property
    def geometry(self):
        """The affine map photo -> network input as a :class:`lrpfast.boxes.Geometry`
        (``x_out = x_in * scale + offset`` per axis, continuous pixel coordinates)."""
        from .boxes import Geometry
        (sy, sx), (oy, ox) = self.scale, self.offset
        h, w = self.photo_size
        H, W = self.x.shape[1:]
        return Geometry((sx, sy), (float(-ox), float(-oy)),
                        (round(w * sx), round(h * sy)), (W, H))

    def boxes_to_input(self, boxes) -> np.ndarray:
        """Boxes ``(K, 4)`` in photo pixels -> network-input pixels, both in lrpfast's box
        convention (``xmin, ymin, xmax, ymax``, 0-based inclusive; see :mod:`lrpfast.boxes`);
        clipped to the input, boxes wholly outside it dropped."""
        from .boxes import affine_boxes
        g = self.geometry
        return affine_boxes(boxes, g.scale, g.offset, g.out_size)

    def boxes_to_photo(self, boxes) -> np.ndarray:
        """Boxes ``(K, 4)`` in network-input pixels (e.g. a detection) -> photo pixels (same
        convention as :meth:`boxes_to_input`, clipped to the photo)."""
        from .boxes import affine_boxes
        g = self.geometry
        (sx, sy), (ox, oy) = g.scale, g.offset
        h, w = self.photo_size
        return affine_boxes(boxes, (1.0 / sx, 1.0 / sy), (-ox / sx, -oy / sy), (w, h))

    def to_photo(self, img, fill=255) -> np.ndarray:
        """An image on the network input's grid (``(H, W, 3)`` uint8, e.g. a heatmap, or a
        ``(H, W)`` float map) resampled onto the original photo's grid ``(h, w, ...)``.
        Photo pixels outside what the net saw (cropped away) get ``fill``; padded input pixels
        are dropped."""
        from PIL import Image
        a = np.asarray(img)
        H, W = self.x.shape[1:]
        if a.shape[:2] != (H, W):
            raise ValueError(f"expected an image of the network input's size {(H, W)}, got "
                             f"{a.shape[:2]}")
        h, w = self.photo_size
        sy, sx = self.scale
        rh, rw = round(h * sy), round(w * sx)
        oy, ox = self.offset
        is_float = a.dtype.kind == "f"
        canvas = np.full((rh, rw) + a.shape[2:], fill, a.dtype)
        y0, x0 = max(0, oy), max(0, ox)
        y1, x1 = min(rh, oy + H), min(rw, ox + W)
        canvas[y0:y1, x0:x1] = a[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        if is_float:
            planes = canvas.reshape(rh, rw, -1).astype(np.float32)
            out = np.stack([np.asarray(Image.fromarray(planes[:, :, c]).resize(
                (w, h), _BILINEAR)) for c in range(planes.shape[2])], axis=2)
            return out.reshape((h, w) + a.shape[2:])
        return np.asarray(Image.fromarray(np.ascontiguousarray(canvas)).resize(
            (w, h), _BILINEAR))


def preprocess(image: Any, size: Union[int, Sequence[int]], *, mode: str = "crop",
               base: Optional[int] = None, mean=None, std=None, channel_order: str = "bgr",
               scale: float = 1.0) -> Preprocessed:
    """One photo -> the network input and the geometry to map results back.

    Parameters
    ----------
    image : path, PIL image, numpy array or torch tensor
        See :func:`load_rgb` (numpy arrays are ``(h, w, 3)`` RGB; torch tensors ``(3, h, w)``).
    size : int or (H, W)
        The network input's spatial size, e.g. ``net.inputs["data"][1:]``.
    mode : "crop" | "pad" | "resize"
        See the module docstring; "crop" (resize the short side, centre-crop) is the default
        for photos, "pad" is the LRP toolbox's heatmap tool.
    base : int, optional
        "crop": the short side after resizing (default: the smallest size that covers the
        input); "pad": the long side after resizing (default ``max(H, W)``).
    mean : None, number, (C,) or (C, Hm, Wm) array, in ``channel_order``
        Subtracted after ``scale`` (a mean image: its centre ``H x W`` region). Caffe
        ImageNet models: e.g. ``(104, 117, 123)`` (BGR).
    std : None, number or (C,)
        Divides after the mean (PyTorch-style models).
    channel_order : "bgr" (Caffe) | "rgb"
    scale : float
        Multiplies the 0..255 pixel values first (``1/255`` for models trained on 0..1).
    Returns
    -------
    :class:`Preprocessed` with ``x`` float32 (3, H, W).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb'; got {channel_order!r}")
    sz = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(
        int(s) for s in size)
    if len(sz) != 2 or min(sz) < 1:
        raise ValueError(f"size must be an int or (H, W) > 0; got {size!r}")
    H, W = sz
    src = _pil_rgb(image)
    pixels = load_rgb(image) if src is None else _pixels(src)
    h, w = pixels.shape[:2]
    if mode == "resize":
        rw, rh = W, H
    elif mode == "pad":
        rw, rh = resized_size(w, h, int(base) if base is not None else max(H, W))
    else:
        f = max(H / h, W / w) if base is None else int(base) / min(h, w)
        rw, rh = max(W if base is None else 1, math.floor(w * f + 0.5)), \
            max(H if base is None else 1, math.floor(h * f + 0.5))
    if base is not None and int(base) < 1:
        raise ValueError(f"base must be >= 1; got {base}")
    # only the part of the resized photo that the input keeps is computed: per axis the centre
    # window of a longer side (what fit_axis would crop), all of a shorter one (then padded)
    y0, ny = ((rh - H) // 2, H) if rh > H else (0, rh)
    x0, nx = ((rw - W) // 2, W) if rw > W else (0, rw)
    if (rw, rh) != (w, h):
        img = resize_bilinear(pixels, (rh, rw), (y0, x0, ny, nx))
    else:
        img = pixels[y0:y0 + ny, x0:x0 + nx, :3]
    img, py = fit_axis(img, 0, H)
    img, px = fit_axis(img, 1, W)
    oy, ox = y0 + py, x0 + px
    crop = np.ascontiguousarray(img)
    planes = crop[:, :, ::-1] if channel_order == "bgr" else crop
    x = planes.transpose(2, 0, 1).astype(np.float32, order="C")   # planes, not pixels, in memory
    if scale != 1.0:
        x *= np.float32(scale)
    if mean is not None:
        x -= mean_region(mean, sz)
    if std is not None:
        s = np.asarray(std, np.float32)
        if np.any(s <= 0):
            raise ValueError("std must be > 0")
        x /= s.reshape(-1, 1, 1) if s.ndim == 1 else s
    return Preprocessed(x=np.ascontiguousarray(x, dtype=np.float32), image=crop,
                        photo_size=(h, w), scale=(rh / h, rw / w), offset=(oy, ox), mode=mode)
