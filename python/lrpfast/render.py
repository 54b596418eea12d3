"""Relevance maps to RGB images (pure numpy + Pillow; no matplotlib).

Shapes and types used throughout:

* relevance ``R``: float array ``(C, H, W)`` (the net's input layout, e.g. Caffe BGR planes, as
  returned by :meth:`lrpfast.Net.relevance` for one image) or ``(H, W)`` (already reduced).
* images: ``(H, W, 3)`` ``uint8`` RGB (``(H, W)`` grey is accepted where noted).

Main entry points:

* :func:`heatmap` -- relevance -> ``(H, W, 3)`` ``uint8`` with a choice of normalisation,
  clipping and colour map; :func:`scale_of` gives the value at the end of its scale.
* :func:`relevance_overlay` -- relevance over the photo, opacity following ``|R|``.
* :func:`colorbar`, :func:`with_colorbar` -- the colour scale with its values.
* :func:`grid` -- pictures with labels that wrap instead of running into each other.
* :func:`toolbox_heatmap` -- exactly the LRP toolbox's ``<name>_heatmap.png`` scheme.
* :func:`overlay` (constant-alpha blend), :func:`save_png`.

Every picture is an :class:`RGBImage`: a numpy ``uint8`` array that Jupyter shows.

Clipping: the end of the colour scale is the 99.5th percentile of ``|h|`` by default
(``percentile=``; :data:`DEFAULT_PERCENTILE`), or an absolute ``vmax``, symmetric about zero,
so that a few hot pixels cannot leave the rest of the map blank.

Normalisations (``norm=``), applied to the channel-reduced map ``h`` with ``d`` the end of the
scale (the percentile, ``vmax`` or the maximum):

* ``"symmetric"``: ``v = h / d`` clipped to ``[-1, 1]``.
* ``"positive"``: ``v = max(h, 0) / d`` in ``[0, 1]`` (negative relevance shows as zero).
* ``"toolbox"``: the LRP toolbox's scheme: channel **mean** divided by the largest positive
  value (``vmax`` replaces it), clamped to ``[-1, 1]``; if no value is positive the whole map is
  zero (the toolbox then writes a black image).

A zero normaliser (e.g. an all-zero map) never produces NaN: the map is treated as all zero.

Colour maps (``cmap=``) are small piecewise-linear tables (knots in :data:`COLORMAPS`):

* diverging maps, defined on ``v`` in ``[-1, 1]`` (zero in the middle): ``"bwr"`` (blue <-
  white -> red, the default), ``"seismic"`` (darker ends), ``"coldnhot"`` (cyan-blue <- black ->
  red-yellow) and ``"toolbox"`` (blue <- black -> yellow, the toolbox's colours);
* sequential maps, defined on ``t`` in ``[0, 1]``: ``"viridis"`` (perceptually uniform),
  ``"heat"`` (black-red-yellow-white) and ``"gray"``. With the ``"positive"`` normalisation
  ``t = v``; with a signed normalisation ``t = (v + 1) / 2`` (zero relevance sits in the middle
  of the map, as with matplotlib's ``imshow(vmin=-1, vmax=1)``).

Floating-point colours in ``[0, 1]`` become bytes the way the toolbox's ImageMagick (Q16) did:
``q = trunc(c * 65535)``, ``byte = (q + 128) // 257`` (within one level of ``round(c * 255)``).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["heatmap", "toolbox_heatmap", "overlay", "relevance_overlay", "colorbar",
           "with_colorbar", "scale_of", "grid", "save_png", "RGBImage", "COLORMAPS", "NORMS",
           "DEFAULT_CMAP", "DEFAULT_PERCENTILE", "to_uint8"]

#: Colour-map tables: name -> (kind, knots, rgb). ``kind`` is "diverging" (knots on [-1, 1]) or
#: "sequential" (knots on [0, 1]); ``rgb`` has one row per knot with values in [0, 1].
#: ``seismic`` follows matplotlib's map of that name, ``coldnhot`` zennit's (cyan-blue for
#: negative, red-yellow for positive, black at zero), ``viridis`` samples matplotlib's
#: perceptually uniform map at nine points.
COLORMAPS = {
    "toolbox": ("diverging", (-1.0, 0.0, 1.0),
                ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 0.0))),
    "bwr": ("diverging", (-1.0, 0.0, 1.0),
            ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0))),
    "seismic": ("diverging", (-1.0, -0.5, 0.0, 0.5, 1.0),
                ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0),
                 (0.5, 0.0, 0.0))),
    "coldnhot": ("diverging", (-1.0, -0.5, 0.0, 0.5, 1.0),
                 ((0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0),
                  (1.0, 1.0, 0.0))),
    "heat": ("sequential", (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0),
             ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0))),
    "gray": ("sequential", (0.0, 1.0), ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))),
    "viridis": ("sequential", tuple(k / 8.0 for k in range(9)),
                ((0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530),
                 (0.207, 0.372, 0.553), (0.164, 0.471, 0.558), (0.128, 0.567, 0.551),
                 (0.135, 0.659, 0.518), (0.267, 0.749, 0.441), (0.993, 0.906, 0.144))),
}

#: The colour map that the API, the ``heatmaps`` command and the demo use by default.
DEFAULT_CMAP = "bwr"
#: Default clipping: the 99.5th percentile of ``|h|`` (of ``max(h, 0)`` for ``norm="positive"``)
#: becomes the end of the colour scale, so a few hot pixels cannot make the rest of the map
#: look empty (Captum's ``outlier_perc`` = 0.5).
DEFAULT_PERCENTILE = 99.5

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
    """The toolbox's colours for the channel mean ``m`` scaled by ``vmax`` (default: its
    largest positive value)."""
    M = max(0.0, float(np.max(m))) if vmax is None else float(vmax)
    rgb = np.zeros(m.shape + (3,), dtype=np.float64)
    if np.isfinite(M) and M > 0:
        pos = m >= 0
        v = m / M
        rgb[..., 0] = np.where(pos, v, 0.0)
        rgb[..., 1] = rgb[..., 0]
        rgb[..., 2] = np.where(pos, 0.0, -v)
    return to_uint8(rgb)


def _clip_value(h: np.ndarray, percentile: Optional[float]) -> float:
    """The end of the colour scale for the values ``h`` (>= 0): their ``percentile``-th
    percentile, taken as the next larger sample (``method="higher"``, so maps of fewer than
    ~200 pixels use their maximum), or the maximum when ``percentile`` is None."""
    if percentile is None:
        return float(np.max(h))
    return float(np.percentile(h, percentile, method="higher"))


def _check_percentile(percentile) -> Optional[float]:
    if percentile is None:
        return None
    p = float(percentile)
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100] or None; got {percentile!r}")
    return p


def scale_of(R, norm: str = "symmetric", channel_reduce: str = "sum",
             percentile="auto") -> float:
    """The relevance value that :func:`heatmap` maps to the end of its colour scale.

    ``"symmetric"``: the ``percentile`` of ``|h|``; ``"positive"``: of ``max(h, 0)``;
    ``"toolbox"``: of ``max(h, 0)`` with ``h`` the channel mean. ``percentile="auto"`` is
    :data:`DEFAULT_PERCENTILE` for "symmetric"/"positive" and the maximum (None) for
    "toolbox", the toolbox's own scheme. Use it to share one scale across images
    (``heatmap(R2, vmax=scale_of(R1))``) or to label a colour bar.
    """
    R = _as_relevance(R)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    if isinstance(percentile, str):
        if percentile != "auto":
            raise ValueError(f"percentile must be a number, None or 'auto'; got {percentile!r}")
        percentile = None if norm == "toolbox" else DEFAULT_PERCENTILE
    p = _check_percentile(percentile)
    if norm == "toolbox":
        return max(0.0, _clip_value(np.maximum(_reduce(R, "mean"), 0.0), p))
    h = _reduce(R, channel_reduce)
    return _clip_value(np.abs(h) if norm == "symmetric" else np.maximum(h, 0.0), p)


def heatmap(R, cmap: str = DEFAULT_CMAP, norm: str = "symmetric", channel_reduce: str = "sum",
            vmax: Optional[float] = None, percentile="auto") -> "RGBImage":
    """Relevance -> RGB heatmap.

    Parameters
    ----------
    R : array (C, H, W) or (H, W)
        Relevance of one image (channels are reduced first).
    cmap : str
        Colour map, one of :data:`COLORMAPS` (see the module docstring).
    norm : "symmetric" | "positive" | "toolbox"
        Normalisation, see the module docstring. ``"toolbox"`` always reduces channels by the
        mean (as the toolbox did), whatever ``channel_reduce`` says; with ``cmap="toolbox"``,
        no ``vmax`` and the default ``percentile`` the result equals :func:`toolbox_heatmap` up
        to channel summation order.
    channel_reduce : "sum" | "mean"
        How (C, H, W) is reduced to (H, W).
    vmax : float, optional
        Absolute clipping: a fixed end of the colour scale (``|h| >= vmax`` saturates), e.g. to
        share one scale across images. Wins over ``percentile``. ``vmax <= 0`` renders the map
        as all zero.
    percentile : float in (0, 100], None or "auto"
        Percentile clipping, symmetric about zero: the end of the scale is this percentile of
        ``|h|`` (see :func:`scale_of`); None uses the maximum. "auto" (default):
        :data:`DEFAULT_PERCENTILE` (99.5) for "symmetric"/"positive", the maximum for
        "toolbox".

    Returns
    -------
    (H, W, 3) uint8 RGB as an :class:`RGBImage` (a numpy array that shows itself in
    Jupyter). An all-zero map renders as the colour of zero (never NaN).
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
    d = scale_of(R, norm, channel_reduce, percentile) if vmax is None else vmax

    if norm == "toolbox":
        h = _reduce(R, "mean")
        if cmap == "toolbox":
            return RGBImage.of(_toolbox_from_mean(h, d))
        v = np.clip(_safe_div(h, d), -1.0, 1.0)
        return RGBImage.of(to_uint8(_apply_cmap(v, cmap, signed=True)))
    h = _reduce(R, channel_reduce)
    if norm == "symmetric":
        v = np.clip(_safe_div(h, d), -1.0, 1.0)
        return RGBImage.of(to_uint8(_apply_cmap(v, cmap, signed=True)))
    v = np.clip(_safe_div(np.maximum(h, 0.0), d), 0.0, 1.0)   # positive
    return RGBImage.of(to_uint8(_apply_cmap(v, cmap, signed=False)))


class RGBImage(np.ndarray):
    """A ``uint8`` image array (``(H, W, 3)`` or ``(H, W)``) that Jupyter shows as a picture
    (``_repr_png_``). It is a plain numpy array in every other respect; ``np.asarray(img)``
    gives the base array."""

    @classmethod
    def of(cls, a) -> "RGBImage":
        return np.asarray(a, dtype=np.uint8).view(cls)

    def _repr_png_(self) -> Optional[bytes]:
        a = np.asarray(self)
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in
                                                            (3, 4)) or a.size == 0:
            return None
        import io

        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
        return buf.getvalue()


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
    return RGBImage.of(np.clip(np.floor(out + 0.5), 0, 255))


def relevance_overlay(image, R, cmap: str = DEFAULT_CMAP, alpha: float = 0.85,
                      vmax: Optional[float] = None, percentile="auto",
                      channel_reduce: str = "sum", grey: bool = True) -> RGBImage:
    """Relevance drawn over a photo with an opacity that follows its magnitude.

    The photo (``grey=True``: desaturated, so that the colour map's colours stand out) stays
    as it is where relevance is low; a pixel with normalised relevance ``v`` (``|v| <= 1``,
    clipped as in :func:`heatmap`) gets the colour map's colour at opacity ``alpha * |v|``::

        out = (1 - alpha * |v|) * photo + alpha * |v| * colour(v)

    Parameters
    ----------
    image : (H, W, 3) uint8 photo (or (H, W) grey), the picture the net saw.
    R : (C, H, W) or (H, W) relevance of that picture (same H, W).
    cmap, vmax, percentile, channel_reduce : as :func:`heatmap` (``norm="symmetric"``).
    alpha : float in [0, 1], opacity of the most relevant pixels.

    Returns
    -------
    (H, W, 3) uint8 :class:`RGBImage`.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    Rr = _as_relevance(R)
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown cmap {cmap!r}; choose one of {sorted(COLORMAPS)}")
    photo = _as_rgb_float(image, "image")
    h = _reduce(Rr, channel_reduce)
    if photo.shape[:2] != h.shape:
        raise ValueError(f"image and relevance sizes differ: image {photo.shape[:2]} (H, W) vs "
                         f"relevance {h.shape}; preprocess the image to the net's input first")
    d = scale_of(Rr, "symmetric", channel_reduce, percentile) if vmax is None else float(vmax)
    v = np.clip(_safe_div(h, d), -1.0, 1.0)
    colour = _apply_cmap(v, cmap, signed=True) * 255.0
    if grey:
        lum = photo @ np.array([0.299, 0.587, 0.114])
        photo = np.repeat(lum[:, :, None], 3, axis=2)
    w = (float(alpha) * np.abs(v))[:, :, None]
    out = (1.0 - w) * photo + w * colour
    return RGBImage.of(np.clip(np.floor(out + 0.5), 0, 255))


def _font(size: int = 11):
    """Pillow's default font (a scalable one where the Pillow build has FreeType)."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def colorbar(cmap: str = DEFAULT_CMAP, vmax: float = 1.0, height: int = 128, width: int = 12,
             signed: bool = True, label: Optional[str] = None) -> RGBImage:
    """A vertical colour bar with its scale: the colour map from ``-vmax`` (bottom; 0 when
    ``signed=False``) to ``+vmax`` (top), with the values of both ends and of the middle
    written to its right, and an optional ``label`` above. Returns (H', W', 3) uint8 on white
    (``H' >= height``)."""
    from PIL import Image, ImageDraw

    if cmap not in COLORMAPS:
        raise ValueError(f"unknown cmap {cmap!r}; choose one of {sorted(COLORMAPS)}")
    height, width = int(height), int(width)
    if height < 8 or width < 1:
        raise ValueError(f"colorbar needs height >= 8 and width >= 1; got {height}, {width}")
    t = np.linspace(1.0, -1.0 if signed else 0.0, height)[:, None].repeat(width, axis=1)
    bar = to_uint8(_apply_cmap(t, cmap, signed=signed))
    font = _font()
    lo = -vmax if signed else 0.0
    ticks = [(0, vmax), (height // 2, (vmax + lo) / 2), (height - 1, lo)]
    texts = [f"{v:.3g}" for _, v in ticks]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tw = max(math.ceil(probe.textbbox((0, 0), s, font=font)[2]) for s in texts)
    th = max(math.ceil(probe.textbbox((0, 0), s, font=font)[3]) for s in texts)
    top = th + 4 if label else th // 2 + 1
    if label:
        tw = max(tw, math.ceil(probe.textbbox((0, 0), label, font=font)[2]) - width - 4)
    W, H = width + 6 + tw + 2, top + height + th // 2 + 2
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, top))
    draw = ImageDraw.Draw(canvas)
    for (y, _), s in zip(ticks, texts):
        draw.line([(width, top + y), (width + 3, top + y)], fill=(0, 0, 0))
        draw.text((width + 5, top + y - th // 2), s, fill=(0, 0, 0), font=font)
    if label:
        draw.text((0, 0), label, fill=(0, 0, 0), font=font)
    return RGBImage.of(np.asarray(canvas))


def with_colorbar(img, vmax: float, cmap: str = DEFAULT_CMAP, signed: bool = True,
                  label: Optional[str] = None, pad: int = 6) -> RGBImage:
    """``img`` (e.g. from :func:`heatmap` or :func:`relevance_overlay`) with a
    :func:`colorbar` of its scale (``vmax``: e.g. :func:`scale_of` of the relevance) on its
    right, on white."""
    im = _as_uint8_image(img)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    im = im[:, :, :3]
    bar = np.asarray(colorbar(cmap, vmax, height=max(8, im.shape[0] - 20), signed=signed,
                              label=label))
    H = max(im.shape[0], bar.shape[0])
    out = np.full((H, im.shape[1] + pad + bar.shape[1], 3), 255, np.uint8)
    out[:im.shape[0], :im.shape[1]] = im
    out[:bar.shape[0], im.shape[1] + pad:] = bar
    return RGBImage.of(out)


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


def _wrap(text: str, width: int, draw, font) -> list:
    """``text`` broken into lines no wider than ``width`` pixels: at spaces where it can, else
    inside a word (a single character wider than ``width`` still gets a line of its own)."""
    def fits(s):
        return draw.textbbox((0, 0), s, font=font)[2] <= width

    lines: list = []
    for para in text.split("\n"):
        cur = ""
        for word in para.split(" "):
            cand = word if not cur else cur + " " + word
            if fits(cand):
                cur = cand
                continue
            if cur:
                lines.append(cur)
            cur = ""
            for ch in word:   # a word wider than the cell: break it
                if cur and not fits(cur + ch):
                    lines.append(cur)
                    cur = ""
                cur += ch
        lines.append(cur)
    return lines


def grid(images: Sequence, labels: Optional[Sequence[str]] = None,
         ncols: Optional[int] = None, pad: int = 4, return_label_boxes: bool = False):
    """Arrange images in a grid on a white background, each with an optional text label below.

    Parameters
    ----------
    images : sequence of (H_i, W_i, 3) uint8 (or (H_i, W_i) grey / float 0..255)
        Images may differ in size; every cell is max H by max W, images sit at its top left.
    labels : sequence of str, optional
        One per image, drawn below it in black with Pillow's default font. A label wider than
        its cell is wrapped (at spaces, else inside words) so that labels never run into each
        other; the label strip is as high as the longest wrapped label.
    ncols : int, optional
        Columns; default ``ceil(sqrt(n))``.
    pad : int
        Pixels between cells and around the border.
    return_label_boxes : bool
        Also return the pixel box ``(x0, y0, x1, y1)`` (exclusive ends) that each label's text
        occupies, e.g. to check that none overlap.

    Returns
    -------
    (H_out, W_out, 3) uint8 :class:`RGBImage` with ``W_out = ncols * cw + (ncols + 1) * pad``
    and ``H_out = nrows * (ch + lh) + (nrows + 1) * pad``, where ``cw``, ``ch`` are the largest
    image width and height and ``lh`` is the label strip height (0 without labels);
    ``(image, boxes)`` with ``return_label_boxes``.
    """
    from PIL import Image, ImageDraw

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
        ncols = math.ceil(math.sqrt(n))
    ncols = int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)

    font = _font() if labels else None
    lh, wrapped, line_h = 0, [], 0
    if labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        line_h = math.ceil(probe.textbbox((0, 0), "Ag", font=font)[3]) + 1
        wrapped = [_wrap(s, cw, probe, font) for s in labels]
        lh = max(len(w) for w in wrapped) * line_h + 4

    W = ncols * cw + (ncols + 1) * pad
    H = nrows * (ch + lh) + (nrows + 1) * pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    boxes = []
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
            box = None
            for k, line in enumerate(wrapped[i]):
                pos = (x, y + ch + 2 + k * line_h)
                draw.text(pos, line, fill=(0, 0, 0), font=font)
                if line:
                    b = draw.textbbox(pos, line, font=font)
                    box = b if box is None else (min(box[0], b[0]), min(box[1], b[1]),
                                                 max(box[2], b[2]), max(box[3], b[3]))
            boxes.append(box)
    out = RGBImage.of(np.asarray(canvas, dtype=np.uint8))
    return (out, boxes) if return_label_boxes else out


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
