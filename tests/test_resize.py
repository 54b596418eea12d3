"""The native photo resize (``lrpfast.preprocess.resize_bilinear``, ``_core.resize_bilinear``):
Pillow's antialiased bilinear filter in its classic order (horizontal pass to 8 bits, then
vertical), computed only on the window the network keeps.

Two independent references: a numpy one written from the filter's formula (dense weight
matrices, exact integer sums) and Pillow itself, one axis at a time (a one-axis resize has no
pass order to choose). Every SIMD path, every source layout (RGB, RGBX, rows further apart,
Pillow's Arrow export) and random windows; then preprocess() against the whole resize
followed by the crop or pad, and bad arguments.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lrpfast
from lrpfast import _core
from lrpfast.preprocess import _pil_rgb, _pixels, fit_axis, resize_bilinear

from conftest import seeded_rng

BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def _taps(n_in: int, n_out: int):
    """Per output: (first input, int64 fixed-point weights with 22 fractional bits) of the
    antialiased bilinear filter, from its formula: output o centred at
    c = (o + 0.5) * n_in / n_out, a triangle of half-width s = max(n_in / n_out, 1) over the
    inputs [int(c - s + 0.5), int(c + s + 0.5)), normalised to sum 1 (summed left to right)."""
    scale = n_in / n_out
    s = max(scale, 1.0)
    inv = 1.0 / s
    taps = []
    for o in range(n_out):
        c = (o + 0.5) * scale
        lo, hi = max(int(c - s + 0.5), 0), min(int(c + s + 0.5), n_in)
        i = np.arange(lo, hi)
        w = np.maximum(1.0 - np.abs((i - c + 0.5) * inv), 0.0)
        tot = 0.0
        for v in w:
            tot += v
        if tot != 0.0:
            w = w / tot
        taps.append((lo, np.trunc(np.where(w < 0, -0.5, 0.5) + w * 2.0 ** 22).astype(np.int64)))
    return taps


def _pass(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One pass along axis (0 rows, 1 columns) of int64 pixels, rounded and clipped to 8 bits."""
    xs = np.moveaxis(x, axis, 0)
    out = np.empty((n_out,) + xs.shape[1:], np.int64)
    for o, (lo, w) in enumerate(_taps(xs.shape[0], n_out)):
        acc = np.tensordot(w, xs[lo:lo + len(w)], axes=(0, 0))
        out[o] = np.clip((acc + 2 ** 21) >> 22, 0, 255)
    return np.moveaxis(out, 0, axis)


def _reference(a: np.ndarray, size) -> np.ndarray:
    """The whole resize of a (h, w, >=3) uint8 to size = (H, W): horizontal pass (skipped if
    the width stays), rounded to 8 bits, then vertical (skipped if the height stays)."""
    H, W = size
    x = a[:, :, :3].astype(np.int64)
    if W != x.shape[1]:
        x = _pass(x, W, 1)
    if H != x.shape[0]:
        x = _pass(x, H, 0)
    return x.astype(np.uint8)


def _pillow_classic(a: np.ndarray, size) -> np.ndarray:
    """Pillow's resize in the classic order, one axis per call."""
    H, W = size
    im = Image.fromarray(np.ascontiguousarray(a[:, :, :3]))
    if W != im.width:
        im = im.resize((W, im.height), BILINEAR)
    if H != im.height:
        im = im.resize((W, H), BILINEAR)
    return np.asarray(im)


def _sources(a: np.ndarray):
    """The same pixels as RGB, RGBX, RGB with rows further apart, and Pillow's Arrow view."""
    h, w = a.shape[:2]
    yield "rgb", a
    yield "rgbx", np.concatenate([a, np.full((h, w, 1), 7, np.uint8)], axis=2)
    yield "strided rows", np.pad(a, ((0, 0), (0, 5), (0, 0)))[:, :w]
    yield "pillow", _pixels(Image.fromarray(a))


def _geometries(rng, n):
    """(h, w, H, W): shrinking, enlarging, mixed, one-pixel sides, an axis that keeps its size."""
    fixed = [(1, 1, 3, 5), (5, 1, 2, 7), (7, 9, 7, 4), (7, 9, 3, 9), (3, 3, 7, 7),
             (1000, 1500, 256, 384), (500, 750, 256, 384), (667, 1001, 256, 384), (33, 200, 17, 9)]
    out = list(fixed)
    while len(out) < n:
        h, w = (int(v) for v in rng.integers(1, 140, 2))
        H, W = (int(v) for v in rng.integers(1, 170, 2))
        k = len(out) % 6
        out.append((h, w, h if k == 0 else H, w if k == 1 else W))
    return out


def test_resize_matches_the_formula_and_pillow_on_random_windows(simd):
    """Bytes equal to both references, on every window of every geometry and source layout:
    random noise, and black/white images (the sums at 0 and 255 test the clipping)."""
    rng = seeded_rng("resize", simd)
    for j, (h, w, H, W) in enumerate(_geometries(rng, 48)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if j % 3 == 0:
            a = np.where(rng.random((h, w, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, 2)
        ref = _reference(a, (H, W))
        np.testing.assert_array_equal(_pillow_classic(a, (H, W)), ref, err_msg=str((h, w, H, W)))
        full = resize_bilinear(a, (H, W))
        np.testing.assert_array_equal(full, ref, err_msg=str((h, w, H, W)))
        for _ in range(3):
            y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
            ny, nx = int(rng.integers(0, H - y0 + 1)), int(rng.integers(0, W - x0 + 1))
            for name, src in _sources(a):
                got = resize_bilinear(src, (H, W), (y0, x0, ny, nx))
                assert got.shape == (ny, nx, 3) and got.dtype == np.uint8
                np.testing.assert_array_equal(got, ref[y0:y0 + ny, x0:x0 + nx],
                                              err_msg=str((name, h, w, H, W, y0, x0, ny, nx)))


def test_resize_paths_agree_on_a_photo():
    """A 1500 x 1000 photo-sized image to 384 x 256 (the centre 227 x 227): every SIMD path
    gives the same bytes, equal to the formula's."""
    rng = seeded_rng("resize", "photo")
    a = rng.integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    ref = _reference(a, (256, 384))[14:241, 78:305]
    before = _core.get_simd()
    try:
        for path in ("native", "avx2", "generic"):
            _core.set_simd(path)
            np.testing.assert_array_equal(resize_bilinear(a, (256, 384), (14, 78, 227, 227)), ref)
    finally:
        _core.set_simd(before)


@pytest.mark.parametrize("size,base,mode", [((227, 227), 256, "crop"), ((64, 64), None, "crop"),
                                            ((40, 90), 70, "crop"), ((61, 61), None, "pad"),
                                            ((50, 50), 50, "crop"), ((33, 47), None, "resize"),
                                            ((90, 30), 20, "crop")])
def test_preprocess_is_the_whole_resize_then_the_crop_or_pad(size, base, mode):
    """preprocess() resizes only the kept window; its picture is the whole resize (the formula)
    followed by the centre crop / edge pad, and its input the BGR planes minus the mean, for
    landscape, portrait, enlarged, padded and mixed (one side cropped, the other padded)
    geometries; files, PIL images and arrays alike."""
    rng = seeded_rng("resize", "preprocess", size, base, mode)
    for h, w in [(375, 500), (1001, 667), (301, 299), (70, 120), (20, 30)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = lrpfast.preprocess(img, size, mode=mode, base=base, mean=(10.0, 20.0, 30.0))
        rh, rw = round(h * p.scale[0]), round(w * p.scale[1])
        whole = _reference(img, (rh, rw))
        want, oy = fit_axis(whole, 0, size[0])
        want, ox = fit_axis(want, 1, size[1])
        assert p.offset == (oy, ox) and p.photo_size == (h, w)
        np.testing.assert_array_equal(p.image, want, err_msg=str((h, w)))
        np.testing.assert_array_equal(
            p.x, want[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
            - np.array([10, 20, 30], np.float32)[:, None, None])
        q = lrpfast.preprocess(Image.fromarray(img), size, mode=mode, base=base,
                               mean=(10.0, 20.0, 30.0))
        np.testing.assert_array_equal(q.x, p.x)


def test_pillow_pixels_are_viewed_without_a_copy_or_copied_when_split(tmp_path):
    """_pixels: Pillow's Arrow export as an (h, w, 4) view (first three bytes the RGB pixel)
    that stays valid after the image is gone; an image whose rows lie in several memory blocks
    cannot be exported and comes back as numpy's (h, w, 3) copy. A photo file bigger than a
    block is decoded into one block (_pil_rgb), so it is viewed, and preprocess() gives the
    same input either way."""
    rng = seeded_rng("resize", "pixels")
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    if not hasattr(im, "__arrow_c_array__"):
        pytest.skip("this Pillow has no Arrow export (Pillow < 11.2): numpy's copy is used")
    px = _pixels(im)
    assert px.shape == (37, 53, 4) and px.dtype == np.uint8
    np.testing.assert_array_equal(px[:, :, :3], a)
    del im
    np.testing.assert_array_equal(px[:, :, :3], a)
    core = Image.core
    if not hasattr(core, "set_block_size"):
        pytest.skip("this Pillow cannot set its block size")
    old = core.get_block_size()
    try:
        core.set_block_size(4096)   # 53 RGBX pixels per row: 19 rows per block
        split = Image.fromarray(a)
        cp = _pixels(split)
        assert cp.shape == (37, 53, 3)
        np.testing.assert_array_equal(cp, a)
        for name in ("a.png", "a.jpg"):
            path = tmp_path / name
            split.save(path)
            decoded = _pil_rgb(str(path))
            px = _pixels(decoded)
            assert px.shape == (37, 53, 4), name
            np.testing.assert_array_equal(px[:, :, :3], np.asarray(Image.open(path)))
            p = lrpfast.preprocess(str(path), 20, mean=(1.0, 2.0, 3.0))
            core.set_block_size(old)
            q = lrpfast.preprocess(np.asarray(Image.open(path)), 20, mean=(1.0, 2.0, 3.0))
            core.set_block_size(4096)
            np.testing.assert_array_equal(p.x, q.x)
    finally:
        core.set_block_size(old)


def test_bad_arguments_raise_value_errors():
    a = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        _core.resize_bilinear(a.astype(np.float32), (2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        _core.resize_bilinear(np.zeros((4, 5, 2), np.uint8), (2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="contiguous"):
        _core.resize_bilinear(np.zeros((4, 10, 3), np.uint8)[:, ::2], (2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="no pixels"):
        _core.resize_bilinear(np.zeros((0, 5, 3), np.uint8), (2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="size"):
        _core.resize_bilinear(a, (0, 2), (0, 0, 0, 0))
    for window in [(1, 0, 2, 2), (0, 0, 3, 1), (-1, 0, 1, 1), (0, 0, 1, -1)]:
        with pytest.raises(ValueError, match="window"):
            _core.resize_bilinear(a, (2, 2), window)
    s, arr = Image.fromarray(a).__arrow_c_array__() if hasattr(
        Image.Image, "__arrow_c_array__") else (None, None)
    if s is not None:
        with pytest.raises(ValueError, match="4 x 4 pixels"):
            _core.arrow_pixels(s, arr, 4, 4)
        with pytest.raises(ValueError, match="capsules"):
            _core.arrow_pixels(arr, s, 4, 5)


_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np
from lrpfast import _core

page = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
rng = np.random.default_rng(int(sys.argv[1]))
for path in ("native", "generic"):
    _core.set_simd(path)
    for trial in range(60):
        c = 3 + trial % 2
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 40))
        H, W = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        buf = mmap.mmap(-1, 2 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0   # PROT_NONE
        n = h * w * c
        a = np.frombuffer(buf, np.uint8, count=n, offset=page - n).reshape(h, w, c)
        a[...] = rng.integers(0, 256, a.shape)   # the image ends where the guard page starts
        _core.resize_bilinear(a, (H, W), (0, 0, H, W))
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect via libc (Linux)")
def test_resize_reads_nothing_past_the_image():
    """Images whose last byte is the last byte before an inaccessible page (mprotect): every
    geometry resizes without touching that page (a read there would kill the subprocess), on
    the vector path (16-byte loads near the end go through a buffer) and the portable one."""
    r = subprocess.run([sys.executable, "-c", _GUARD_SCRIPT, "5"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
