"""lrpfast.render: heatmap colouring, the toolbox _heatmap.png scheme, overlay, grid, PNG."""
import numpy as np
import pytest
from PIL import Image

from lrpfast import render


def _toolbox_reference(R):
    """Straight transcription of the toolbox demonstrator's loop, for comparison."""
    C, H, W = R.shape
    vs = np.zeros((H, W))
    maxabs = 0.0
    for h in range(H):
        for w in range(W):
            s = 0.0
            for c in range(C - 1, -1, -1):     # rawhm is RGB = net channels reversed
                s += float(R[c, h, w])
            vs[h, w] = s / C
            maxabs = max(maxabs, vs[h, w])
    img = np.zeros((H, W, 3))
    if maxabs > 0:
        for h in range(H):
            for w in range(W):
                if vs[h, w] < 0:
                    img[h, w, 2] = -vs[h, w] / maxabs
                else:
                    img[h, w, 0] = img[h, w, 1] = vs[h, w] / maxabs
    q = np.floor(np.clip(img, 0, 1) * 65535.0).astype(np.int64)
    return ((q + 128) // 257).astype(np.uint8)


@pytest.mark.parametrize("cmap", sorted(render.COLORMAPS))
@pytest.mark.parametrize("norm", render.NORMS)
def test_shapes_dtype_range(cmap, norm):
    rng = np.random.default_rng(0)
    R = rng.standard_normal((3, 7, 9)).astype(np.float32)
    for x in (R, R.sum(0)):
        out = render.heatmap(x, cmap=cmap, norm=norm)
        assert out.shape == (7, 9, 3) and out.dtype == np.uint8
        assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("cmap", sorted(render.COLORMAPS))
@pytest.mark.parametrize("norm", render.NORMS)
def test_all_zero_map(cmap, norm):
    with np.errstate(all="raise"):
        out = render.heatmap(np.zeros((3, 4, 5)), cmap=cmap, norm=norm)
    assert out.shape == (4, 5, 3)
    assert (out == out[0, 0]).all()                      # uniform: the colour of zero
    assert np.array_equal(render.toolbox_heatmap(np.zeros((3, 4, 5))), np.zeros((4, 5, 3)))


def test_toolbox_known_pixels():
    R = np.zeros((3, 2, 3))
    R[:, 0, 0] = 3.0          # largest positive -> pure yellow
    R[:, 0, 1] = 1.5          # half -> half yellow
    R[:, 0, 2] = -3.0         # as negative as the max is positive -> pure blue
    R[:, 1, 0] = -30.0        # more negative -> blue, clamped
    R[:, 1, 1] = 0.0          # zero -> black
    R[:, 1, 2] = [4.0, -1.0, -3.0]  # mean 0 -> black
    img = render.toolbox_heatmap(R)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 255, 0)
    assert tuple(img[0, 1]) == (127, 127, 0)     # 0.5 -> trunc(32767.5)=32767 -> 127
    assert tuple(img[0, 2]) == (0, 0, 255)
    assert tuple(img[1, 0]) == (0, 0, 255)
    assert tuple(img[1, 1]) == (0, 0, 0)
    assert tuple(img[1, 2]) == (0, 0, 0)
    # heatmap(cmap="toolbox", norm="toolbox") is the same scheme
    assert np.array_equal(render.heatmap(R, cmap="toolbox", norm="toolbox"), img)
    # channel mean, not sum, and normalised by the largest *positive* value (not max |R|)
    R2 = np.zeros((3, 1, 2))
    R2[:, 0, 0] = [1.0, 0.0, 0.0]
    R2[:, 0, 1] = -10.0
    img2 = render.toolbox_heatmap(R2)
    assert tuple(img2[0, 0]) == (255, 255, 0) and tuple(img2[0, 1]) == (0, 0, 255)


def test_toolbox_nothing_positive_is_black():
    R = -np.abs(np.random.default_rng(3).standard_normal((3, 4, 4))) - 0.1
    assert not render.toolbox_heatmap(R).any()


def test_toolbox_matches_transcription():
    rng = np.random.default_rng(7)
    R = (rng.standard_normal((3, 6, 5)) * rng.random((1, 6, 5)) * 10).astype(np.float32)
    assert np.array_equal(render.toolbox_heatmap(R), _toolbox_reference(R))
    # in the 2-D (already averaged) form too
    m = R.astype(np.float64).mean(0)
    out = render.toolbox_heatmap(m)
    assert np.abs(out.astype(int) - _toolbox_reference(R).astype(int)).max() <= 1


def test_bwr_known_pixels():
    R = np.array([[2.0, -2.0, 0.0, 1.0, -4.0]])
    img = render.heatmap(R, cmap="bwr", norm="symmetric")    # max |R| = 4
    assert tuple(img[0, 2]) == (255, 255, 255)               # zero -> white
    assert tuple(img[0, 4]) == (0, 0, 255)                   # most negative -> blue
    assert tuple(img[0, 0]) == (255, 127, 127)               # 0.5 -> half way to red
    assert tuple(img[0, 1]) == (127, 127, 255)
    # vmax fixes the scale (clamped beyond it)
    img_v = render.heatmap(R, cmap="bwr", vmax=2.0)
    assert tuple(img_v[0, 0]) == (255, 0, 0) and tuple(img_v[0, 4]) == (0, 0, 255)
    # positive norm: negative shown like zero (white); max positive pure red
    img_p = render.heatmap(R, cmap="bwr", norm="positive")
    assert tuple(img_p[0, 0]) == (255, 0, 0)
    assert tuple(img_p[0, 1]) == (255, 255, 255) and tuple(img_p[0, 4]) == (255, 255, 255)


def test_sequential_maps_and_channel_reduce():
    R = np.zeros((3, 1, 3))
    R[:, 0, 0] = 1.0
    R[0, 0, 1] = 1.0
    g = render.heatmap(R, cmap="gray", norm="positive", channel_reduce="sum")
    assert tuple(g[0, 0]) == (255, 255, 255) and tuple(g[0, 2]) == (0, 0, 0)
    assert tuple(g[0, 1]) == (85, 85, 85)                     # 1/3 of the max
    gm = render.heatmap(R, cmap="gray", norm="positive", channel_reduce="mean")
    assert np.array_equal(g, gm)                              # scale-free normalisation
    h = render.heatmap(np.array([[0.0, 1.0]]), cmap="heat", norm="positive")
    assert tuple(h[0, 0]) == (0, 0, 0) and tuple(h[0, 1]) == (255, 255, 255)
    # signed norm on a sequential map: zero sits mid-map (heat: 0.5 between red and yellow)
    hs = render.heatmap(np.array([[0.0, 1.0, -1.0]]), cmap="heat", norm="symmetric")
    assert tuple(hs[0, 1]) == (255, 255, 255) and tuple(hs[0, 2]) == (0, 0, 0)
    assert tuple(hs[0, 0]) == (255, 127, 0)
    with pytest.raises(ValueError):
        render.heatmap(R, cmap="jet")
    with pytest.raises(ValueError):
        render.heatmap(R, norm="abs")
    with pytest.raises(ValueError):
        render.heatmap(R, channel_reduce="max")
    with pytest.raises(ValueError):
        render.heatmap(np.zeros((1, 2, 3, 4)))


def test_overlay_blend():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (100, 200, 50)
    heat = np.zeros((2, 2, 3), np.uint8)
    heat[0, 0] = (255, 255, 0)
    out = render.overlay(img, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (178, 228, 25)                 # (a+b)/2 rounded half up
    assert np.array_equal(render.overlay(img, heat, 0.0), img)
    assert np.array_equal(render.overlay(img.astype(np.float64), heat, 1.0), heat)
    assert render.overlay(img[:, :, 0], heat).shape == (2, 2, 3)   # grey image
    with pytest.raises(ValueError, match="sizes differ"):
        render.overlay(np.zeros((3, 2, 3)), heat)
    with pytest.raises(ValueError):
        render.overlay(img, heat, alpha=1.5)


def test_grid_size_and_content():
    a = np.full((10, 12, 3), 10, np.uint8)
    b = np.full((8, 12, 3), 200, np.uint8)
    g = render.grid([a, b, a], ncols=2, pad=4)
    assert g.dtype == np.uint8
    assert g.shape == (2 * 10 + 3 * 4, 2 * 12 + 3 * 4, 3)
    assert (g[4:14, 4:16] == 10).all() and (g[4:12, 20:32] == 200).all()
    assert (g[0:4] == 255).all()                              # white border
    gl = render.grid([a, b, a], labels=["z", "eps", "alpha2beta1"], ncols=3, pad=2)
    assert gl.shape[1] == 3 * 12 + 4 * 2
    assert gl.shape[0] > 10 + 2 * 2                           # label strip added
    strip = gl[2 + 10:gl.shape[0] - 2, 2:2 + 12]
    assert (strip < 128).any()                                # some dark text pixels
    assert render.grid([a]).shape == (18, 20, 3)
    with pytest.raises(ValueError):
        render.grid([a, b], labels=["only one"])
    with pytest.raises(ValueError):
        render.grid([])


def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    img = render.heatmap(rng.standard_normal((3, 9, 11)))
    p = tmp_path / "sub" / "x_heatmap.png"
    render.save_png(p, img)
    back = np.asarray(Image.open(p).convert("RGB"))
    assert np.array_equal(back, img)
    g = (rng.random((5, 6)) * 255).astype(np.uint8)
    render.save_png(tmp_path / "g.png", g)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), g)
    with pytest.raises(ValueError):
        render.save_png(tmp_path / "bad.png", np.zeros((2, 3, 5)))


def test_non_finite_relevance_is_an_error():
    R = np.zeros((3, 2, 2))
    R[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render.heatmap(R)
    with pytest.raises(ValueError, match="NaN"):
        render.toolbox_heatmap(R)
