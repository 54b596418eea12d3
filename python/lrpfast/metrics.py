"""Localisation measures of Kohlbrenner et al. (2020), pure numpy.

Definitions, for one heatmap ``h`` (relevance summed over colour channels, ``(H, W)``) and the
union mask of the target class's ground-truth boxes (``S_in`` of ``S_tot = H * W`` pixels):

* ``R_in``  = sum of the **positive** relevance inside the mask,
  ``R_tot`` = sum of the positive relevance in the whole image (negative relevance is ignored);
* ``mu   = R_in / R_tot`` (fraction of positive relevance on the object, in [0, 1]);
* ``mu_w = mu * S_tot / S_in`` (weighted by the inverse box fraction: a uniform map scores 1,
  a random guess scores 1 in expectation, a perfect map ``S_tot / S_in``).

Undefined cases return NaN (never a warning, never an exception): ``R_tot == 0`` (no positive
relevance at all) gives ``mu = mu_w = NaN``; an empty mask (``S_in == 0``) gives ``mu = 0`` but
``mu_w = NaN``. The aggregates (:func:`table_row`, :func:`mu_by_box_size`) skip NaN samples;
:func:`evaluate` reports how many were undefined.

Box convention (used by :func:`box_mask` and everything in :mod:`lrpfast.boxes`): a box is
``(xmin, ymin, xmax, ymax)`` in **0-based, inclusive pixel indices** -- pixel ``(x, y)``
(column ``x``, row ``y``) is in the box iff ``xmin <= x <= xmax`` and ``ymin <= y <= ymax``.
PASCAL VOC / ILSVRC XML files store 1-based inclusive coordinates;
:func:`lrpfast.boxes.read_voc` converts them (subtracts 1).

Object-centricity check (the paper's Fig. 2): :func:`occlude` and :func:`occlusion_drop`.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

__all__ = ["box_mask", "mu", "mu_w", "mu_and_mu_w", "evaluate", "table_row", "mu_by_box_size",
           "box_fraction", "occlude", "occlusion_drop"]


# --------------------------------------------------------------------------------------------
# masks

def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) (xmin, ymin, xmax, ymax); got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes contain NaN or infinite coordinates")
    return b


def box_mask(boxes, shape) -> np.ndarray:
    """Union of boxes as a boolean mask.

    Parameters
    ----------
    boxes : (K, 4) or (4,) array-like
        ``(xmin, ymin, xmax, ymax)``, 0-based inclusive pixel indices (see the module docstring).
        Non-integer coordinates are rounded to the nearest pixel. Parts outside the image are
        clipped away; boxes with ``xmax < xmin`` or ``ymax < ymin`` are empty. ``K = 0`` gives an
        all-False mask.
    shape : (H, W), or any shape whose last two entries are (H, W)

    Returns
    -------
    (H, W) bool; overlapping boxes are counted once (a union).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (H, W); got {shape}")
    H, W = shape[-2], shape[-1]
    m = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in np.rint(_as_boxes(boxes)).astype(np.int64):
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, W - 1), min(y1, H - 1)
        if x1 >= x0 and y1 >= y0:
            m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def box_fraction(mask) -> float:
    """S_in / S_tot of a (H, W) mask."""
    m = np.asarray(mask, dtype=bool)
    return float(m.sum()) / float(m.size) if m.size else float("nan")


# --------------------------------------------------------------------------------------------
# mu, mu_w

def _as_map(h) -> np.ndarray:
    """(H, W) or (C, H, W) (summed over C) -> float64 (H, W)."""
    a = np.asarray(h)
    if a.ndim == 3:
        a = a.astype(np.float64).sum(axis=0)
    elif a.ndim == 2:
        a = a.astype(np.float64)
    else:
        raise ValueError(f"heatmap must be (H, W) or (C, H, W); got shape {a.shape}")
    return a


def _check_mask(mask, hw) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(hw):
        raise ValueError(f"mask shape {m.shape} does not match heatmap (H, W) {tuple(hw)}")
    return m.astype(bool, copy=False)


def mu_and_mu_w(h, mask) -> Tuple[float, float]:
    """``(mu, mu_w)`` of one heatmap; see the module docstring for the undefined cases."""
    a = _as_map(h)
    m = _check_mask(mask, a.shape)
    p = np.maximum(a, 0.0)
    r_tot = float(p.sum())
    s_in = int(m.sum())
    if not r_tot > 0.0:
        return float("nan"), float("nan")
    mu_ = float(p[m].sum()) / r_tot
    if s_in == 0:
        return mu_, float("nan")
    return mu_, mu_ * (m.size / s_in)


def mu(h, mask) -> float:
    """mu = R_in / R_tot with positive relevance only.

    Parameters
    ----------
    h : (H, W) heatmap, or (C, H, W) relevance (summed over C first).
    mask : (H, W) bool, the union of the target class's boxes (e.g. :func:`box_mask`).

    Returns
    -------
    float in [0, 1]; NaN when the map has no positive relevance (R_tot = 0).
    """
    return mu_and_mu_w(h, mask)[0]


def mu_w(h, mask) -> float:
    """mu_w = mu * S_tot / S_in (a uniform map scores 1). NaN if R_tot = 0 or S_in = 0."""
    return mu_and_mu_w(h, mask)[1]


def evaluate(heatmaps, masks) -> Dict[str, np.ndarray]:
    """mu and mu_w for many images.

    Parameters
    ----------
    heatmaps : (N, H, W) or (N, C, H, W) array, or a sequence of N (H_i, W_i) / (C, H_i, W_i)
        arrays (sizes may differ between images).
    masks : (N, H, W) bool array or a sequence of N (H_i, W_i) masks.

    Returns
    -------
    dict of float64 arrays of length N: ``mu``, ``mu_w``, ``box_fraction`` (S_in / S_tot),
    ``r_in``, ``r_tot`` (positive relevance inside / in total); and ``n_undefined`` (int: samples
    whose mu is NaN because R_tot = 0).
    """
    if isinstance(heatmaps, np.ndarray) and heatmaps.ndim in (3, 4):
        hs = heatmaps
        if hs.ndim == 4:
            hs = hs.astype(np.float64).sum(axis=1)
        else:
            hs = hs.astype(np.float64)
        ms = np.asarray(masks).astype(bool)
        if ms.shape != hs.shape:
            raise ValueError(f"masks shape {ms.shape} does not match heatmaps (N, H, W) "
                             f"{hs.shape}")
        p = np.maximum(hs, 0.0)
        N = hs.shape[0]
        r_tot = p.reshape(N, -1).sum(axis=1)
        r_in = np.where(ms, p, 0.0).reshape(N, -1).sum(axis=1)
        s_in = ms.reshape(N, -1).sum(axis=1).astype(np.float64)
        s_tot = float(hs.shape[1] * hs.shape[2])
        ok = r_tot > 0
        mus = np.full(N, np.nan)
        mus[ok] = r_in[ok] / r_tot[ok]
        mws = np.full(N, np.nan)
        ok2 = ok & (s_in > 0)
        mws[ok2] = mus[ok2] * (s_tot / s_in[ok2])
        frac = s_in / s_tot if s_tot > 0 else np.full(N, np.nan)
    else:
        hl = list(heatmaps)
        ml = list(masks)
        if len(hl) != len(ml):
            raise ValueError(f"got {len(hl)} heatmaps but {len(ml)} masks")
        N = len(hl)
        mus, mws, frac = np.full(N, np.nan), np.full(N, np.nan), np.full(N, np.nan)
        r_in, r_tot = np.zeros(N), np.zeros(N)
        for i, (h, m) in enumerate(zip(hl, ml)):
            a = _as_map(h)
            mm = _check_mask(m, a.shape)
            p = np.maximum(a, 0.0)
            r_tot[i] = p.sum()
            r_in[i] = p[mm].sum()
            mus[i], mws[i] = mu_and_mu_w(a, mm)
            frac[i] = box_fraction(mm)
    return {"mu": mus, "mu_w": mws, "box_fraction": np.asarray(frac, dtype=np.float64),
            "r_in": np.asarray(r_in, dtype=np.float64),
            "r_tot": np.asarray(r_tot, dtype=np.float64),
            "n_undefined": int(np.isnan(mus).sum())}


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def table_row(mus, mu_ws, box_fractions) -> Dict[str, float]:
    """One row of the paper's Table 1.

    Parameters
    ----------
    mus, mu_ws, box_fractions : length-N sequences (box fraction = S_in / S_tot in [0, 1]).

    Returns
    -------
    dict: ``mu_w`` = mean mu_w; ``mu_le_025`` = mean mu over samples with box fraction <= 0.25;
    ``mu_le_05`` = mean mu over samples with box fraction <= 0.5; ``mu`` = mean mu.
    NaN samples are skipped; an empty selection gives NaN.
    """
    m = np.asarray(mus, dtype=np.float64).ravel()
    w = np.asarray(mu_ws, dtype=np.float64).ravel()
    f = np.asarray(box_fractions, dtype=np.float64).ravel()
    if not (m.size == w.size == f.size):
        raise ValueError(f"lengths differ: {m.size} mus, {w.size} mu_ws, {f.size} fractions")
    return {"mu_w": _nanmean(w),
            "mu_le_025": _nanmean(m[f <= 0.25]),
            "mu_le_05": _nanmean(m[f <= 0.5]),
            "mu": _nanmean(m)}


def mu_by_box_size(mus, fractions, bins: int = 100
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean mu against box size (the paper's Fig. 3).

    ``[0, 1]`` is cut into ``bins`` equal bins ``[k/bins, (k+1)/bins)`` (the last one also holds
    fraction 1.0). NaN mus are not counted.

    Returns
    -------
    (centres (bins,), mean mu per bin (bins,) with NaN for empty bins, counts (bins,) int64).
    """
    bins = int(bins)
    if bins < 1:
        raise ValueError(f"bins must be >= 1; got {bins}")
    m = np.asarray(mus, dtype=np.float64).ravel()
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if m.size != f.size:
        raise ValueError(f"lengths differ: {m.size} mus vs {f.size} fractions")
    ok = ~np.isnan(m) & ~np.isnan(f)
    if np.any((f[ok] < 0) | (f[ok] > 1)):
        raise ValueError("box fractions must lie in [0, 1]")
    m, f = m[ok], f[ok]
    idx = np.minimum((f * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    sums = np.bincount(idx, weights=m, minlength=bins)
    means = np.full(bins, np.nan)
    nz = counts > 0
    means[nz] = sums[nz] / counts[nz]
    centres = (np.arange(bins) + 0.5) / bins
    return centres, means, counts


# --------------------------------------------------------------------------------------------
# occlusion (object-centricity check, Fig. 2)

def occlude(image, mask, fill, region: str = "object") -> np.ndarray:
    """Replace the pixels inside (``region="object"``) or outside (``"context"``) a mask.

    Parameters
    ----------
    image : (C, H, W) (the net's input layout) or (H, W)
    mask : (H, W) bool
    fill : scalar, per-channel (C,) values (e.g. the training-set mean per channel), or an array
        of the image's shape (e.g. a mean image)
    region : "object" | "context"

    Returns
    -------
    A new array of the image's shape and dtype.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (C, H, W) or (H, W); got shape {img.shape}")
    m = _check_mask(mask, img.shape[-2:])
    if region == "object":
        sel = m
    elif region == "context":
        sel = ~m
    else:
        raise ValueError(f"region must be 'object' or 'context'; got {region!r}")
    fv = np.asarray(fill, dtype=np.float64)
    if fv.ndim == 1 and img.ndim == 3:
        if fv.shape[0] != img.shape[0]:
            raise ValueError(f"fill has {fv.shape[0]} values for {img.shape[0]} channels")
        fv = fv[:, None, None]
    try:
        full = np.broadcast_to(fv, img.shape)
    except ValueError:
        raise ValueError(f"fill of shape {np.shape(fill)} does not fit image {img.shape}") from None
    out = img.copy()
    out[..., sel] = full[..., sel].astype(img.dtype)
    return out


def occlusion_drop(logit_fn: Callable[[np.ndarray], np.ndarray], image, mask, cls: int,
                   fill) -> Dict[str, float]:
    """Drop of the true-class logit when the object or the context is occluded.

    One call of ``logit_fn`` on a batch of three images: the original, object occluded
    (pixels inside the mask replaced by ``fill``) and context occluded (outside replaced).

    Parameters
    ----------
    logit_fn : maps an image batch (N, C, H, W) float32 to logits (N, K)
    image : (C, H, W) image in the net's input layout (``fill`` in the same units)
    mask : (H, W) bool object mask (union of boxes)
    cls : int, the true class
    fill : scalar, (C,) or (C, H, W): the replacement, e.g. the training-set mean per channel

    Returns
    -------
    dict: ``object_drop`` = logit(original) - logit(object occluded), ``context_drop`` =
    logit(original) - logit(context occluded), ``object_area`` = S_in / S_tot, ``context_area``
    = 1 - object_area (occluded fractions), ``logit`` = logit(original).
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W); got shape {img.shape}")
    m = _check_mask(mask, img.shape[-2:])
    batch = np.stack([img, occlude(img, m, fill, "object"),
                      occlude(img, m, fill, "context")]).astype(np.float32)
    z = np.asarray(logit_fn(batch))
    if z.ndim != 2 or z.shape[0] != 3:
        raise ValueError(f"logit_fn must return (N, K) logits for N = 3 images; got shape "
                         f"{z.shape}")
    cls = int(cls)
    if not 0 <= cls < z.shape[1]:
        raise ValueError(f"class {cls} out of range for {z.shape[1]} logits")
    z = z[:, cls].astype(np.float64)
    a = box_fraction(m)
    return {"object_drop": float(z[0] - z[1]), "context_drop": float(z[0] - z[2]),
            "object_area": a, "context_area": 1.0 - a, "logit": float(z[0])}
