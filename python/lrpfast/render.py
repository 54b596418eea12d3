"""Relevance maps to RGB images (pure numpy + Pillow; no matplotlib).

Shapes and types used throughout:

* relevance ``R``: float array ``(C, H, W)`` (the net's input layout, e.g. Caffe BGR planes, as
  returned by :meth:`lrpfast.Net.relevance` for one image) or ``(H, W)`` (already reduced).
* images: ``(H, W, 3)`` ``uint8`` RGB (``(H, W)`` grey is accepted where noted).

Main entry points:

* :func:`heatmap` -- relevance -> ``(H, W, 3)`` ``uint8`` with a choice of normalisation and
  colour map.
* :func:`toolbox_heatmap` -- exactly the LRP toolbox's ``<name>_heatmap.png`` scheme.
* :func:`overlay`, :func:`grid`, :func:`save_png`.

Normalisations (``norm=``), applied to the channel-reduced map ``h``:

* ``"symmetric"``: ``v = h / max|h|`` in ``[-1, 1]`` (``vmax`` replaces ``max|h|``).
* ``"positive"``: ``v = max(h, 0) / max(h)`` in ``[0, 1]`` (negative relevance shows as zero).
* ``"toolbox"``: the LRP toolbox's scheme: channel **mean** divided by the largest positive
  value (``vmax`` replaces it), clamped to ``[-1, 1]``; if no value is positive the whole map is
  zero (the toolbox then writes a black image).

``v`` is then clipped to its range and coloured. A zero normaliser (e.g. an all-zero map) never
produces NaN: the map is treated as all zero.

Colour maps (``cmap=``) are small piecewise-linear tables (knots in :data:`COLORMAPS`):

* diverging maps, defined on ``v`` in ``[-1, 1]`` (zero in the middle):
  ``"toolbox"`` (blue <- black -> yellow, the toolbox's colours) and ``"bwr"``
  (blue <- white -> red);
* sequential maps, defined on ``t`` in ``[0, 1]``: ``"heat"`` (black-red-yellow-white) and
  ``"gray"``. With the ``"positive"`` normalisation ``t = v``; with a signed normalisation
  ``t = (v + 1) / 2`` (zero relevance sits in the middle of the map, as with matplotlib's
  ``imshow(vmin=-1, vmax=1)``).

Floating-point colours in ``[0, 1]`` become bytes the way the toolbox's ImageMagick (Q16) did:
``q = trunc(c * 65535)``, ``byte = (q + 128) // 257`` (within one level of ``round(c * 255)``).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["heatmap", "toolbox_heatmap", "overlay", "grid", "save_png", "COLORMAPS",
           "NORMS", "to_uint8"]

#: Colour-map tables: name -> (kind, knots, rgb). ``kind`` is "diverging" (knots on [-1, 1]) or
#: "sequential" (knots on [0, 1]); ``rgb`` has one row per knot with values in [0, 1].
COLORMAPS = {
    "toolbox": ("diverging", (-1.0, 0.0, 1.0),
                ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 0.0))),
    "bwr": ("diverging", (-1.0, 0.0, 1.0),
            ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0))),
    "heat": ("sequential", (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0),
             ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0))),
    "gray": ("sequential", (0.0, 1.0), ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))),
}

#: Supported normalisations.
NORMS = ("symmetric", "positive", "toolbox")


# --------------------------------------------------------------------------------------------
# helpers

def to_uint8(c: np.ndarray) -> np.ndarray:
    """Colours in ``[0, 1]`` (any shape, clamped) -> ``uint8``, ImageMagick-Q16 style.

    ``q = trunc(clip(c, 0, 1) * 65535)``; ``byte = (q + 128) // 257``. NaN becomes 0.
    """
    c = np.nan_to_num(np.asarray(c, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    q = np.floor(np.clip(c, 0.0, 1.0) * 65535.0).astype(np.int64)
    return ((q + 128) // 257).astype(np.uint8)


def _as_relevance(R) -> np.ndarray:
    R = np.asarray(R)
    if R.ndim not in (2, 3):
        raise ValueError(f"relevance must be (C, H, W) or (H, W); got shape {R.shape}")
    if R.size == 0:
        raise ValueError(f"relevance is empty (shape {R.shape})")
    if not np.issubdtype(R.dtype, np.number) or np.iscomplexobj(R):
        raise TypeError(f"relevance must be a real numeric array; got dtype {R.dtype}")
    R = R.astype(np.float64, copy=False)
    if not np.all(np.isfinite(R)):
        raise ValueError(f"relevance contains {int(np.sum(~np.isfinite(R)))} NaN/infinite "
                         "values; cannot render it")
    return R


def _reduce(R: np.ndarray, how: str) -> np.ndarray:
    """(C, H, W) -> (H, W) by sum or mean over channels; (H, W) is returned as is."""
    if R.ndim == 2:
        return R
    if how == "sum":
        return R.sum(axis=0)
    if how == "mean":
        return R.mean(axis=0)
    raise ValueError(f"channel_reduce must be 'sum' or 'mean'; got {how!r}")


def _safe_div(x: np.ndarray, d: float) -> np.ndarray:
    """x / d, or zeros when d is not a positive finite number (all-zero maps: no NaN)."""
    if not (np.isfinite(d) and d > 0):
        return np.zeros_like(x)
    return x / d


def _apply_cmap(v: np.ndarray, name: str, signed: bool) -> np.ndarray:
    """Normalised map v -> (H, W, 3) float colours in [0, 1]."""
    try:
        kind, knots, rgb = COLORMAPS[name]
    except KeyError:
        raise ValueError(f"unknown cmap {name!r}; choose one of {sorted(COLORMAPS)}") from None
    if kind == "diverging":
        t = np.clip(v, -1.0, 1.0)
    else:
        t = np.clip((v + 1.0) / 2.0 if signed else v, 0.0, 1.0)
    xp = np.asarray(knots, dtype=np.float64)
    fp = np.asarray(rgb, dtype=np.float64)
    out = np.empty(v.shape + (3,), dtype=np.float64)
    for ch in range(3):
        out[..., ch] = np.interp(t, xp, fp[:, ch])
    return out


# --------------------------------------------------------------------------------------------
# heatmaps

def toolbox_heatmap(R_chw, channel_order: str = "bgr") -> np.ndarray:
    """The LRP toolbox's ``<name>_heatmap.png`` rendering, exactly.

    ``m = mean over channels of R`` (in double precision); ``M = max(0, max m)``; if ``M > 0``:
    a pixel with ``m >= 0`` gets red = green = ``m / M`` (yellow), a pixel with ``m < 0`` gets
    blue = ``-m / M`` clamped to 1; everything else is 0. If ``M == 0`` (nothing positive) the
    image is all black, as in the toolbox.

    Parameters
    ----------
    R_chw : array (C, H, W) or (H, W)
        Relevance of one image, normally in the net's input layout (Caffe BGR planes).
    channel_order : "bgr" or "rgb"
        Only fixes the order of the channel sum so that the float result is bit-identical to the
        toolbox, which summed its RGB-ordered ``rawhm`` (``R + G + B``). With "bgr" (the net's
        layout) channels are summed last-to-first. The image itself does not depend on it
        beyond rounding.

    Returns
    -------
    (H, W, 3) uint8 RGB.
    """
    R = _as_relevance(R_chw)
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb'; got {channel_order!r}")
    if R.ndim == 3:
        planes = list(R[::-1]) if channel_order == "bgr" else list(R)
        acc = planes[0].copy()
        for p in planes[1:]:
            acc += p
        m = acc / float(R.shape[0])
    else:
        m = R
    return _toolbox_from_mean(m, None)


def _toolbox_from_mean(m: np.ndarray, vmax: Optional[float]) -> np.ndarray:
    M = max(0.0, float(np.max(m))) if vmax is None else float(vmax)
    rgb = np.zeros(m.shape + (3,), dtype=np.float64)
    if np.isfinite(M) and M > 0:
        pos = m >= 0
        v = m / M
        rgb[..., 0] = np.where(pos, v, 0.0)
        rgb[..., 1] = rgb[..., 0]
        rgb[..., 2] = np.where(pos, 0.0, -v)
    return to_uint8(rgb)


def heatmap(R, cmap: str = "bwr", norm: str = "symmetric", channel_reduce: str = "sum",
            vmax: Optional[float] = None) -> np.ndarray:
    """Relevance -> RGB heatmap.

    Parameters
    ----------
    R : array (C, H, W) or (H, W)
        Relevance of one image (channels are reduced first).
    cmap : "bwr" | "toolbox" | "heat" | "gray"
        Colour map, see the module docstring.
    norm : "symmetric" | "positive" | "toolbox"
        Normalisation, see the module docstring. ``"toolbox"`` always reduces channels by the
        mean (as the toolbox did), whatever ``channel_reduce`` says; with ``cmap="toolbox"`` and
        no ``vmax`` the result equals :func:`toolbox_heatmap` up to channel summation order.
    channel_reduce : "sum" | "mean"
        How (C, H, W) is reduced to (H, W).
    vmax : float, optional
        Fixed normaliser instead of the map's own maximum (``max|h|`` for "symmetric", the
        largest positive value for "positive"/"toolbox"), e.g. to share one scale across
        images. ``vmax <= 0`` renders the map as all zero.

    Returns
    -------
    (H, W, 3) uint8 RGB. An all-zero map renders as the colour of zero (never NaN).
    """
    R = _as_relevance(R)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown cmap {cmap!r}; choose one of {sorted(COLORMAPS)}")
    if vmax is not None:
        vmax = float(vmax)
        if math.isnan(vmax):
            raise ValueError("vmax is NaN")

    if norm == "toolbox":
        h = _reduce(R, "mean")
        if cmap == "toolbox":
            return _toolbox_from_mean(h, vmax)
        d = max(0.0, float(np.max(h))) if vmax is None else vmax
        v = np.clip(_safe_div(h, d), -1.0, 1.0)
        return to_uint8(_apply_cmap(v, cmap, signed=True))

    h = _reduce(R, channel_reduce)
    if norm == "symmetric":
        d = float(np.max(np.abs(h))) if vmax is None else vmax
        v = np.clip(_safe_div(h, d), -1.0, 1.0)
        return to_uint8(_apply_cmap(v, cmap, signed=True))
    # positive
    hp = np.maximum(h, 0.0)
    d = float(np.max(hp)) if vmax is None else vmax
    v = np.clip(_safe_div(hp, d), 0.0, 1.0)
    return to_uint8(_apply_cmap(v, cmap, signed=False))


# --------------------------------------------------------------------------------------------
# composition and output

def _as_rgb_float(img, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{what} must be (H, W, 3) (or (H, W) grey); got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.bool_:
        a = a.astype(np.float64) * 255.0
    return a.astype(np.float64)


def overlay(image, heat, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap over an image: ``(1 - alpha) * image + alpha * heat``.

    Parameters
    ----------
    image : (H, W, 3) uint8, or float with values 0..255; (H, W) grey is accepted.
    heat : (H, W, 3) uint8 (e.g. from :func:`heatmap`), or float 0..255.
    alpha : float in [0, 1], weight of the heatmap.

    Returns
    -------
    (H, W, 3) uint8 (rounded half up, clipped to 0..255).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    a = _as_rgb_float(image, "image")
    b = _as_rgb_float(heat, "heat")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"image and heatmap sizes differ: image {a.shape[:2]} (H, W) vs "
                         f"heat {b.shape[:2]}; resize one of them first")
    out = (1.0 - alpha) * a + alpha * b
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _as_uint8_image(img, what: str = "image") -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"{what} must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.number):
        return np.clip(np.floor(np.nan_to_num(a.astype(np.float64)) + 0.5), 0, 255).astype(
            np.uint8)
    raise TypeError(f"{what} has unsupported dtype {a.dtype}")


def grid(images: Sequence, labels: Optional[Sequence[str]] = None,
         ncols: Optional[int] = None, pad: int = 4) -> np.ndarray:
    """Arrange images in a grid on a white background, each with an optional text label below.

    Parameters
    ----------
    images : sequence of (H_i, W_i, 3) uint8 (or (H_i, W_i) grey / float 0..255)
        Images may differ in size; every cell is max H by max W, images sit at its top left.
    labels : sequence of str, optional
        One per image, drawn below it in black with Pillow's default font.
    ncols : int, optional
        Columns; default ``ceil(sqrt(n))``.
    pad : int
        Pixels between cells and around the border.

    Returns
    -------
    (H_out, W_out, 3) uint8 with ``W_out = ncols * cw + (ncols + 1) * pad`` and
    ``H_out = nrows * (ch + lh) + (nrows + 1) * pad``, where ``cw``, ``ch`` are the largest
    image width and height and ``lh`` is the label strip height (0 without labels).
    """
    from PIL import Image, ImageDraw, ImageFont

    imgs = [_as_uint8_image(im, f"images[{i}]") for i, im in enumerate(images)]
    n = len(imgs)
    if n == 0:
        raise ValueError("grid needs at least one image")
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} images")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0; got {pad}")
    if ncols is None:
        ncols = int(math.ceil(math.sqrt(n)))
    ncols = int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}")
    ncols = min(ncols, n)
    nrows = int(math.ceil(n / ncols))
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)

    font = ImageFont.load_default() if labels else None
    lh = 0
    if labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        heights = [probe.textbbox((0, 0), s or "Ag", font=font)[3] for s in labels]
        lh = max(max(heights), 1) + 4

    W = ncols * cw + (ncols + 1) * pad
    H = nrows * (ch + lh) + (nrows + 1) * pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncols)
        x = pad + c * (cw + pad)
        y = pad + r * (ch + lh + pad)
        if im.ndim == 2:
            pim = Image.fromarray(np.ascontiguousarray(im)).convert("RGB")
        else:
            pim = Image.fromarray(np.ascontiguousarray(im[:, :, :3]))
        canvas.paste(pim, (x, y))
        if labels:
            draw.text((x, y + ch + 2), labels[i], fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def save_png(path, img) -> None:
    """Write an image as PNG with Pillow (parent folders are created).

    ``img``: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, bool, or numbers 0..255
    (rounded, clipped).
    """
    a = _as_uint8_image(img)
    from PIL import Image

    d = os.path.dirname(os.fspath(path))
    if d:
        os.makedirs(d, exist_ok=True)
    # uint8 (H, W) / (H, W, 3) / (H, W, 4) -> Pillow modes L / RGB / RGBA
    Image.fromarray(np.ascontiguousarray(a)).save(os.fspath(path), format="PNG")
