"""Ground-truth bounding boxes: PASCAL VOC / ILSVRC XML readers and the box transform that
follows the image pre-processing. Pure Python + numpy.

Box convention
--------------
Everywhere in lrpfast a box is ``(xmin, ymin, xmax, ymax)`` in **0-based, inclusive pixel
indices**: pixel ``(x, y)`` (column, row) belongs to the box iff ``xmin <= x <= xmax`` and
``ymin <= y <= ymax`` (so the box is ``xmax - xmin + 1`` pixels wide).

PASCAL VOC XML stores 1-based inclusive pixel coordinates (the top-left pixel is ``(1, 1)``; a
box may end at ``xmax == width``); ILSVRC (ImageNet) bounding-box XML follows the same
convention. The readers therefore subtract 1 (``one_based=True``, the default) and clip to the
image size given in the file. The file's own numbers stay available as ``"box_raw"``.

Geometry of the pre-processing
------------------------------
The toolbox's (and ``lrpfast explain``'s) pre-processing is, per axis, an affine map of the
continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``):

1. resize so that the long side is ``resize_to_long_side`` keeping the aspect ratio: new sizes
   ``round(W * r)``, ``round(H * r)`` with ``r = L / max(W, H)`` (C ``round``: halves away from
   zero); the scale per axis is ``new / old``;
2. per axis, to reach the net's input size ``n_out`` from ``n_in``: if ``n_in >= n_out`` crop
   centrally, dropping ``(n_in - n_out) // 2`` pixels at the start; otherwise pad centrally with
   ``(n_out - n_in) // 2`` pixels at the start (the toolbox repeats the edge pixels there).
   Coordinates shift by ``-((n_in - n_out) // 2)`` resp. ``+((n_out - n_in) // 2)``.

``x_out = x_in * scale + offset``. A box ``[x0, x1]`` (inclusive) covers ``[x0, x1 + 1)``; its
image ``[a, b)`` covers the output pixels whose **centres** lie in ``[a, b)``; a box thinner than
one output pixel keeps the pixel holding its centre. The result is clipped to the output image;
boxes with no pixel inside are dropped. Padding adds no object pixels (the repeated edge pixels
are not counted as object).
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["AnnotationError", "read_annotation", "read_voc", "read_imagenet", "boxes_for_class",
           "Geometry", "resized_size", "preprocess_geometry", "affine_boxes", "transform_boxes",
           "transform_box_mask", "class_mask"]

SizeLike = Union[int, Sequence[int]]


class AnnotationError(ValueError):
    """A bounding-box annotation file is malformed or lacks a required field."""


# --------------------------------------------------------------------------------------------
# XML readers

def _text(elem: ET.Element, tag: str, path: str, where: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(f"{path}: missing field <{tag}> in {where}")
    return child.text.strip()


def _number(elem: ET.Element, tag: str, path: str, where: str) -> float:
    s = _text(elem, tag, path, where)
    try:
        v = float(s)
    except ValueError:
        raise AnnotationError(f"{path}: field <{tag}> in {where} is not a number: {s!r}") from None
    if not math.isfinite(v):
        raise AnnotationError(f"{path}: field <{tag}> in {where} is not finite: {s!r}")
    return v


def _flag(elem: ET.Element, tag: str, path: str, where: str) -> int:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return 0  # optional; absent in some VOC test files
    try:
        return int(float(child.text.strip()))
    except ValueError:
        raise AnnotationError(f"{path}: field <{tag}> in {where} is not a number: "
                              f"{child.text.strip()!r}") from None


def read_annotation(path, one_based: bool = True) -> Dict:
    """Read a PASCAL VOC or ILSVRC bounding-box XML file (same schema family).

    Parameters
    ----------
    path : str or path-like
    one_based : bool
        The file stores 1-based inclusive coordinates (VOC, ILSVRC): subtract 1 to get lrpfast's
        0-based inclusive pixel boxes. ``False`` keeps the numbers as they are.

    Returns
    -------
    dict with
      ``"size"``: ``(W, H, depth)`` ints (depth 3 if absent),
      ``"filename"``, ``"folder"``: str (``""`` if absent),
      ``"objects"``: list of dicts ``{"name": str, "box": (xmin, ymin, xmax, ymax) 0-based
      inclusive ints clipped to the image, "box_raw": the file's four numbers (floats),
      "difficult": int, "truncated": int}`` (flags 0 when absent).

    Raises
    ------
    AnnotationError (a ValueError) naming the file for malformed XML or a missing field;
    FileNotFoundError if the file does not exist.
    """
    p = os.fspath(path)
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{p}: malformed XML: {e}") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{p}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    if size is None:
        raise AnnotationError(f"{p}: missing field <size> in <annotation>")
    W = int(_number(size, "width", p, "<size>"))
    H = int(_number(size, "height", p, "<size>"))
    dchild = size.find("depth")
    depth = 3
    if dchild is not None and dchild.text and dchild.text.strip():
        depth = int(_number(size, "depth", p, "<size>"))

    objects: List[Dict] = []
    for k, obj in enumerate(root.findall("object")):
        where = f"<object> #{k + 1}"
        name = _text(obj, "name", p, where)
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"{p}: missing field <bndbox> in {where} ({name})")
        raw = tuple(_number(bb, t, p, f"<bndbox> of {where} ({name})")
                    for t in ("xmin", "ymin", "xmax", "ymax"))
        sub = 1 if one_based else 0
        x0, y0, x1, y1 = (int(round(v)) - sub for v in raw)
        if W > 0:
            x0, x1 = max(x0, 0), min(x1, W - 1)
        if H > 0:
            y0, y1 = max(y0, 0), min(y1, H - 1)
        objects.append({"name": name, "box": (x0, y0, x1, y1), "box_raw": raw,
                        "difficult": _flag(obj, "difficult", p, where),
                        "truncated": _flag(obj, "truncated", p, where)})

    def opt(tag: str) -> str:
        c = root.find(tag)
        return c.text.strip() if c is not None and c.text else ""

    return {"size": (W, H, depth), "filename": opt("filename"), "folder": opt("folder"),
            "objects": objects}


def read_voc(path, one_based: bool = True) -> Dict:
    """Read a PASCAL VOC annotation XML; see :func:`read_annotation` for the result."""
    return read_annotation(path, one_based=one_based)


def read_imagenet(path, one_based: bool = True) -> Dict:
    """Read an ILSVRC (ImageNet) bounding-box XML; object names are synset ids (n01440764).

    Same result as :func:`read_annotation`.
    """
    return read_annotation(path, one_based=one_based)


def boxes_for_class(ann: Dict, name: str, include_difficult: bool = True) -> np.ndarray:
    """The boxes of all objects called ``name`` as an (K, 4) int64 array (K may be 0)."""
    rows = [o["box"] for o in ann.get("objects", ())
            if o["name"] == name and (include_difficult or not o.get("difficult", 0))]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# geometry

class Geometry(NamedTuple):
    """Affine map of the pre-processing: ``x_out = x_in * scale + offset`` per axis."""
    scale: Tuple[float, float]        # (sx, sy)
    offset: Tuple[float, float]       # (ox, oy)
    resized: Tuple[int, int]          # (W, H) after the resize step
    out_size: Tuple[int, int]         # (W, H) of the output (net input)


def _wh(size: SizeLike, what: str) -> Tuple[int, int]:
    if np.isscalar(size):
        s = int(size)
        w, h = s, s
    else:
        t = tuple(int(v) for v in size)
        if len(t) < 2:
            raise ValueError(f"{what} must be an int or (W, H); got {size!r}")
        w, h = t[0], t[1]
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} must be positive; got {size!r}")
    return w, h


def _cround(x: float) -> int:
    """C's round() for non-negative x: halves away from zero."""
    return int(math.floor(x + 0.5))


def resized_size(orig_size: SizeLike, long_side: int) -> Tuple[int, int]:
    """(W, H) after resizing so that the long side is ``long_side`` (aspect kept, toolbox
    rounding: ``round(W * r)``, ``round(H * r)``, ``r = long_side / max(W, H)``)."""
    W, H = _wh(orig_size, "orig_size")
    r = long_side / float(max(W, H))
    return max(1, _cround(W * r)), max(1, _cround(H * r))


def preprocess_geometry(orig_size: SizeLike, resize_to_long_side: Optional[int] = None,
                        crop_or_pad_to: Optional[SizeLike] = None) -> Geometry:
    """The affine map of resize (long side) + per-axis centre crop / pad (module docstring).

    Parameters
    ----------
    orig_size : (W, H) or (W, H, depth) of the original image (as in ``ann["size"]``)
    resize_to_long_side : int or None (no resize), the toolbox's ``baseimgsize``
    crop_or_pad_to : int (square) or (W, H), the net's input size; None = no crop/pad
    """
    W, H = _wh(orig_size, "orig_size")
    if resize_to_long_side is not None:
        rw, rh = resized_size((W, H), int(resize_to_long_side))
    else:
        rw, rh = W, H
    sx, sy = rw / float(W), rh / float(H)
    if crop_or_pad_to is None:
        ow, oh = rw, rh
    else:
        ow, oh = _wh(crop_or_pad_to, "crop_or_pad_to")

    def shift(n_in: int, n_out: int) -> int:
        return -((n_in - n_out) // 2) if n_in >= n_out else (n_out - n_in) // 2

    return Geometry((sx, sy), (float(shift(rw, ow)), float(shift(rh, oh))), (rw, rh), (ow, oh))


_EPS = 1e-9


def _axis(lo: np.ndarray, hi: np.ndarray, s: float, o: float
          ) -> Tuple[np.ndarray, np.ndarray]:
    a = lo * s + o
    b = (hi + 1.0) * s + o
    j0 = np.ceil(a - 0.5 - _EPS)
    j1 = np.ceil(b - 0.5 - _EPS) - 1.0
    thin = j1 < j0
    mid = np.floor((a + b) / 2.0)
    j0 = np.where(thin, mid, j0)
    j1 = np.where(thin, mid, j1)
    return j0, j1


def affine_boxes(boxes, scale: Tuple[float, float], offset: Tuple[float, float],
                 out_size: SizeLike, return_keep: bool = False):
    """Map 0-based inclusive pixel boxes through ``x_out = x_in * scale + offset`` (per axis).

    Parameters
    ----------
    boxes : (K, 4) or (4,) array-like, (xmin, ymin, xmax, ymax) 0-based inclusive
    scale, offset : (sx, sy), (ox, oy)
    out_size : (W, H) of the output image, or an int (square)
    return_keep : also return the (K,) bool array of the input boxes that were kept

    Returns
    -------
    (K', 4) int64 boxes clipped to the output (pixel-centre rule, see the module docstring);
    boxes with no pixel inside the output are dropped.
    """
    b = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) (xmin, ymin, xmax, ymax); got shape {b.shape}")
    Wo, Ho = _wh(out_size, "out_size")
    sx, sy = float(scale[0]), float(scale[1])
    ox, oy = float(offset[0]), float(offset[1])
    if sx <= 0 or sy <= 0:
        raise ValueError(f"scale must be positive; got {scale!r}")
    x0, x1 = _axis(b[:, 0], b[:, 2], sx, ox)
    y0, y1 = _axis(b[:, 1], b[:, 3], sy, oy)
    keep = ((b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
            & (x1 >= 0) & (x0 <= Wo - 1) & (y1 >= 0) & (y0 <= Ho - 1))
    out = np.stack([np.clip(x0, 0, Wo - 1), np.clip(y0, 0, Ho - 1),
                    np.clip(x1, 0, Wo - 1), np.clip(y1, 0, Ho - 1)], axis=1)[keep]
    out = out.astype(np.int64).reshape(-1, 4)
    return (out, keep) if return_keep else out


def transform_boxes(boxes, orig_size: SizeLike, resize_to_long_side: Optional[int] = None,
                    crop_or_pad_to: Optional[SizeLike] = None, return_keep: bool = False):
    """Boxes of the original image -> boxes of the pre-processed (net input) image.

    Parameters
    ----------
    boxes : (K, 4) 0-based inclusive pixel boxes in the original image
    orig_size : (W, H) or (W, H, depth) of the original image
    resize_to_long_side : the toolbox's ``baseimgsize`` (None: no resize)
    crop_or_pad_to : the net's input size, int (square) or (W, H) (None: no crop/pad)
    return_keep : also return which input boxes survived

    Returns
    -------
    (K', 4) int64 boxes in the output image (see :func:`affine_boxes`).
    """
    g = preprocess_geometry(orig_size, resize_to_long_side, crop_or_pad_to)
    return affine_boxes(boxes, g.scale, g.offset, g.out_size, return_keep=return_keep)


def transform_box_mask(boxes, orig_size: SizeLike, resize_to_long_side: Optional[int] = None,
                       crop_or_pad_to: Optional[SizeLike] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Like :func:`transform_boxes`, also returning the union mask of the output boxes.

    Returns
    -------
    (boxes (K', 4) int64, mask (H_out, W_out) bool)
    """
    from .metrics import box_mask

    g = preprocess_geometry(orig_size, resize_to_long_side, crop_or_pad_to)
    out = affine_boxes(boxes, g.scale, g.offset, g.out_size)
    return out, box_mask(out, (g.out_size[1], g.out_size[0]))


def class_mask(ann: Dict, name: str, resize_to_long_side: Optional[int] = None,
               crop_or_pad_to: Optional[SizeLike] = None, include_difficult: bool = True,
               orig_size: Optional[SizeLike] = None) -> np.ndarray:
    """(H_out, W_out) bool union mask of class ``name``'s boxes after the pre-processing.

    ``orig_size`` overrides ``ann["size"]`` (needed when a file's size is 0 or wrong).
    """
    size = orig_size if orig_size is not None else ann["size"][:2]
    try:
        _wh(size, "orig_size")
    except ValueError:
        raise AnnotationError(f"annotation {ann.get('filename', '')!r} has no valid image size "
                              f"{size!r}; pass orig_size") from None
    return transform_box_mask(boxes_for_class(ann, name, include_difficult), size,
                              resize_to_long_side, crop_or_pad_to)[1]
