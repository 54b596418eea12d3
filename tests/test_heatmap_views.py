"""Heatmaps people can see and trust: clipping, colour maps, overlays, colour bar, label grid,
public preprocessing, shared defaults, sentinels, composites without a default, conservation
diagnostics, the heatmaps command's outputs.

Pictures are pinned by their content (fractions of coloured pixels, pixel values computed here
independently, label boxes that do not intersect), never by hashes.
"""
from __future__ import annotations

import io
import os
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import lrpfast
import nets as N
from conftest import seeded_rng
from lrpfast import render
from lrpfast import rules as R
from lrpfast.composites import COMPOSITE_NAMES

# A pixel counts as "coloured" (not background) when some channel is more than this many levels
# away from white: the bwr map's faintest visible tint; JPEG-free PNG output, so exact.
WHITE_MARGIN = 12


def coloured_fraction(img) -> float:
    a = np.asarray(img).astype(int)
    return float(((255 - a[..., :3]).max(axis=2) > WHITE_MARGIN).mean())


def boxes_intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# =============================================================================== rendering
def test_lrpfast_render_is_an_attribute():
    import lrpfast as lf
    assert lf.render is render and lf.preprocess is lrpfast.preprocess


def test_colour_maps_researchers_use():
    assert {"bwr", "seismic", "coldnhot", "toolbox", "gray", "viridis"} <= set(render.COLORMAPS)
    v = np.array([[-1.0, 0.0, 1.0]])
    sm = render.heatmap(v, cmap="seismic", percentile=None)
    # 0.5 -> 127 (the Q16 rounding of render.to_uint8)
    assert tuple(sm[0, 1]) == (255, 255, 255) and tuple(sm[0, 2]) == (127, 0, 0)
    ch = render.heatmap(v, cmap="coldnhot", percentile=None)
    assert tuple(ch[0, 0]) == (0, 255, 255) and tuple(ch[0, 1]) == (0, 0, 0)
    assert tuple(ch[0, 2]) == (255, 255, 0)
    vi = render.heatmap(np.array([[0.0, 1.0]]), cmap="viridis", norm="positive")
    lum = vi.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert lum[0, 1] > lum[0, 0] + 100            # dark purple -> bright yellow


def test_percentile_clipping_is_symmetric_and_keeps_maps_visible():
    rng = seeded_rng("render", "clip")
    h = rng.standard_normal((64, 64))
    h[3, 5] = 1e3                                    # one hot pixel dominates max|h|
    h[60, 2] = -1e3
    flat = render.heatmap(h, percentile=None)
    clipped = render.heatmap(h)                      # default: 99.5th percentile of |h|
    assert coloured_fraction(flat) < 0.01
    assert coloured_fraction(clipped) > 0.5
    s = render.scale_of(h)
    assert s == pytest.approx(np.sort(np.abs(h).ravel())[int(np.ceil(0.995 * (h.size - 1)))])
    # symmetric about zero: -h gives the mirrored colours (red <-> blue)
    neg = render.heatmap(-h)
    np.testing.assert_array_equal(neg[..., 0], clipped[..., 2])
    # absolute clipping wins over the percentile
    va = render.heatmap(h, vmax=2.0)
    assert tuple(va[h >= 2.0][0]) == (255, 0, 0) and tuple(va[h <= -2.0][0]) == (0, 0, 255)
    with pytest.raises(ValueError, match="percentile"):
        render.heatmap(h, percentile=0)


def test_relevance_overlay_opacity_follows_magnitude():
    rng = seeded_rng("render", "overlay")
    photo = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    h = np.zeros((5, 6))
    h[1, 1], h[2, 3], h[4, 5] = 4.0, -2.0, 1.0
    out = render.relevance_overlay(photo, h, vmax=4.0, alpha=0.8).astype(float)
    grey = photo.astype(float) @ np.array([0.299, 0.587, 0.114])
    zero = h == 0
    np.testing.assert_allclose(out[zero], np.repeat(grey[zero][:, None], 3, 1), atol=0.5)
    # v = 1 (red, opacity 0.8), v = -0.5 (bwr: (0.5, 0.5, 1) at opacity 0.4)
    np.testing.assert_allclose(out[1, 1], 0.2 * grey[1, 1] + 0.8 * np.array([255, 0, 0]), atol=0.6)
    np.testing.assert_allclose(out[2, 3], 0.6 * grey[2, 3] + 0.4 * np.array([127.5, 127.5, 255]),
                               atol=0.6)
    with pytest.raises(ValueError, match="sizes differ"):
        render.relevance_overlay(photo, np.zeros((4, 6)))


def test_colour_bar_shows_the_scale():
    bar = np.asarray(render.colorbar("bwr", 0.5, height=100, label="R"))
    assert bar.shape[0] >= 100 and bar.shape[1] > 12
    col = bar[:, 5].astype(int)
    reds = np.flatnonzero((col[:, 0] > 200) & (col[:, 1] < 60))
    blues = np.flatnonzero((col[:, 2] > 200) & (col[:, 0] < 60))
    assert reds.size and blues.size and reds.max() < blues.min()   # + on top, - below
    assert (bar[:, 14:] < 100).any()                                 # tick labels written
    img = np.zeros((80, 60, 3), np.uint8)
    wc = render.with_colorbar(img, vmax=1.0)
    assert wc.shape[0] >= 80 and wc.shape[1] > 60 + 12
    np.testing.assert_array_equal(wc[:80, :60], img)


def test_grid_labels_never_overlap():
    cells = [np.full((40, 40, 3), 200, np.uint8) for _ in range(6)]
    labels = ["cmp_alpha2_flat mu=0.73 mu_w=9.28", "epsilon mu=0.29 mu_w=3.63",
              "alpha1beta0 mu=n/a (no positive relevance)", "x", "",
              "averyveryverylongwordwithoutanyspaces"]
    g, boxes = render.grid(cells, labels, ncols=3, pad=3, return_label_boxes=True)
    drawn = [b for b in boxes if b is not None]
    assert len(drawn) == 5
    for i, a in enumerate(drawn):
        for b in drawn[i + 1:]:
            assert not boxes_intersect(a, b), (a, b)
    for k, b in enumerate(boxes):
        if b is None:
            continue
        c = k % 3
        x0 = 3 + c * (40 + 3)
        assert x0 - 1 <= b[0] and b[2] <= x0 + 40 + 1      # within its own column (+ bearing)
    assert g.shape[1] == 3 * 40 + 4 * 3


def test_rgb_image_shows_itself_in_jupyter():
    img = render.heatmap(np.arange(12.0).reshape(3, 4) - 5)
    png = img._repr_png_()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), img)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8


# =============================================================================== preprocessing
skd = pytest.importorskip("skimage.data")


def test_preprocess_modes_geometry_and_mean():
    photo = skd.chelsea()                                      # 300 x 451 RGB
    p = lrpfast.preprocess(photo, 224)                         # short side -> 224, centre crop
    assert p.x.shape == (3, 224, 224) and p.x.dtype == np.float32 and p.mode == "crop"
    rw = int(np.floor(451 * 224 / 300 + 0.5))                  # 337
    assert p.offset == (0, (rw - 224) // 2)
    ref = np.asarray(Image.fromarray(photo).resize((rw, 224), Image.BILINEAR))
    np.testing.assert_array_equal(p.image, ref[:, p.offset[1]:p.offset[1] + 224])
    np.testing.assert_array_equal(p.x, p.image[:, :, ::-1].transpose(2, 0, 1))   # BGR, 0..255
    # mean pixel, channel order, scale, std
    q = lrpfast.preprocess(photo, 224, mean=(1, 2, 3), std=(2, 2, 2), channel_order="rgb",
                           scale=1 / 255)
    exp = (p.image.transpose(2, 0, 1) / 255.0 - np.array([1, 2, 3])[:, None, None]) / 2
    np.testing.assert_allclose(q.x, exp, rtol=1e-6)
    # mean image: its centre region
    m = seeded_rng("pre", "mean").random((3, 230, 240)).astype(np.float32)
    r = lrpfast.preprocess(photo, 224, mean=m)
    np.testing.assert_allclose(r.x, p.x - m[:, 3:227, 8:232])
    # the toolbox's long side + pad: 224 x 149, padded rows repeat the edge
    t = lrpfast.preprocess(photo, 224, mode="pad")
    sh = int(np.floor(300 * 224 / 451 + 0.5))
    before = (224 - sh) // 2
    assert t.offset == (-before, 0)
    np.testing.assert_array_equal(t.image[0], t.image[before])
    # plain resize
    s = lrpfast.preprocess(photo, (100, 120), mode="resize")
    assert s.image.shape == (100, 120, 3) and s.offset == (0, 0)
    with pytest.raises(ValueError, match="mode"):
        lrpfast.preprocess(photo, 224, mode="stretch")


def test_preprocess_accepts_paths_pil_arrays_and_tensors(tmp_path):
    photo = skd.astronaut()[::4, ::3]
    path = tmp_path / "a.png"
    Image.fromarray(photo).save(path)
    ref = lrpfast.preprocess(photo, 64).x
    for mode in ("crop", "pad", "resize"):   # files and PIL images are resized as PIL images
        want = lrpfast.preprocess(photo, 64, mode=mode)
        for src in (str(path), path, Image.fromarray(photo), photo.astype(np.float32),
                    np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], 2)):
            got = lrpfast.preprocess(src, 64, mode=mode)
            np.testing.assert_array_equal(got.x, want.x)
            np.testing.assert_array_equal(got.image, want.image)
            assert (got.offset, got.scale, got.photo_size) == (want.offset, want.scale,
                                                                want.photo_size)
    grey = photo.mean(axis=2).astype(np.uint8)                 # an L-mode file vs its array
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(lrpfast.preprocess(tmp_path / "g.png", 64).x,
                                  lrpfast.preprocess(grey, 64).x)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        lrpfast.preprocess(tmp_path / "nope.png", 64)
    with pytest.raises(ValueError, match="shape"):
        lrpfast.preprocess(np.zeros((4, 5, 7), np.uint8), 64)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(photo.transpose(2, 0, 1).copy())
    np.testing.assert_array_equal(lrpfast.preprocess(t, 64).x, ref)
    np.testing.assert_allclose(lrpfast.preprocess(t.float() / 255, 64).x, ref, atol=1)


def test_preprocess_maps_boxes_and_heatmaps_back_to_the_photo():
    photo = skd.chelsea()
    for mode in ("crop", "pad", "resize"):
        p = lrpfast.preprocess(photo, 120, mode=mode)
        # a box in the middle of the net input goes to the photo and back
        b = np.array([[40, 30, 79, 89]])
        back = p.boxes_to_input(p.boxes_to_photo(b))
        assert np.abs(back - b).max() <= 1, (mode, back)
        # the net input itself, drawn back onto the photo, matches the photo where seen
        on_photo = p.to_photo(p.image)
        assert on_photo.shape == photo.shape
        seen = p.boxes_to_photo([[0, 0, 119, 119]])[0]
        x0, y0, x1, y1 = seen + np.array([3, 3, -3, -3])
        diff = np.abs(on_photo[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1].astype(int))
        assert np.median(diff) <= 12, mode                  # resampled twice: blurred, not moved
    hm = lrpfast.preprocess(photo, 120).to_photo(np.ones((120, 120), np.float32))
    assert hm.shape == photo.shape[:2] and hm.dtype == np.float32


# =============================================================================== defaults
def test_one_set_of_defaults():
    import inspect

    from lrpfast import demo
    from lrpfast.cli import build_parser
    assert lrpfast.DEFAULT_RULES == "cmp_alpha2_flat"
    sig = inspect.signature(lrpfast.Net.relevance)
    assert sig.parameters["rules"].default == lrpfast.DEFAULT_RULES
    assert demo.DEMO_RULES[0] == lrpfast.DEFAULT_RULES
    assert inspect.signature(render.heatmap).parameters["cmap"].default == render.DEFAULT_CMAP
    assert inspect.signature(demo.run).parameters["cmap"].default == render.DEFAULT_CMAP
    args = build_parser().parse_args(["heatmaps", "--model", "m", "--weights", "w", "--images",
                                      "i", "--out", "o"])
    assert args.rules == lrpfast.DEFAULT_RULES and args.cmap == render.DEFAULT_CMAP
    assert args.resize == "crop" and "overlay" in args.formats


# =============================================================================== real photos
DIGITS_RANGE = (0.02, 0.9)    # coloured fraction of a readable map: not blank, not all colour
# flat and w^2 do not look at the input: they spread relevance over whole receptive fields, so
# every pixel is coloured by design; for them "readable" means not blank and not saturated
SPREADING = ("flat", "wsquare")
SATURATED_MAX = 0.05          # 99.5th percentile clipping saturates ~0.5% of the pixels


def readable(img, name, lo, hi) -> bool:
    f = coloured_fraction(img)
    a = np.asarray(img).astype(int)
    saturated = float(((255 - a).max(axis=2) >= 250).mean())
    return f >= lo and (f <= hi or name in SPREADING) and saturated <= SATURATED_MAX


def _all_composites(low, high):
    out = []
    for name in COMPOSITE_NAMES:
        kw = {"low": low, "high": high} if name == "epsilon_gamma_box" else {}
        out.append((name, lrpfast.composite(name, **kw)))
    return out


def test_default_maps_are_readable_on_the_bundled_model_under_every_composite():
    from lrpfast import demo
    net, info = demo.load_bundled_model()
    s = demo.load_bundled_images(info)[:3]
    x = demo.preprocess(np.stack([t["rgb"] for t in s]), info)
    mean = np.asarray(info["input"]["mean_bgr"], np.float32)
    for name, comp in _all_composites(-mean, 255 - mean):
        Rs = net.relevance(x, [t["label"] for t in s], comp)
        for Ri in Rs:
            img = render.heatmap(Ri)
            assert readable(img, name, *DIGITS_RANGE), (name, coloured_fraction(img))


RES10_MEAN = (104.0, 177.0, 123.0)
# astronaut, res10 face score: the face fills ~4% of the input; a readable map colours at least
# 1% (max-normalised maps colour ~0.5%: that is the "nearly blank" case) and not the whole photo
RES10_RANGE = (0.01, 0.6)


@pytest.fixture(scope="module")
def res10_face(res10_astronaut):
    _, net, p = res10_astronaut
    conf = net.forward(p.x, blobs=["mbox_conf"])["mbox_conf"][0].reshape(-1, 2)
    return net, p, 2 * int(np.argmax(conf[:, 1])) + 1


def _res10_fraction(res10_face, comp):
    net, p, idx = res10_face
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lrpfast.diagnostics.ConservationWarning)
        Ri = net.relevance(p.x, idx, comp, top="mbox_conf")[0]
    return render.heatmap(Ri), Ri


def test_default_map_is_readable_on_a_real_photo(res10_face):
    img, Ri = _res10_fraction(res10_face, lrpfast.DEFAULT_RULES)
    f = coloured_fraction(img)
    assert readable(img, lrpfast.DEFAULT_RULES, *RES10_RANGE), f
    assert coloured_fraction(render.heatmap(Ri, percentile=None)) < f / 2
    ov = render.relevance_overlay(res10_face[1].image, Ri)
    assert np.abs(ov.astype(int) - res10_face[1].image.astype(int)).max() > 100


@pytest.mark.slow
def test_default_maps_are_readable_on_a_real_photo_under_every_composite(res10_face):
    m = np.asarray(RES10_MEAN, np.float32)
    for name, comp in _all_composites(-m, 255 - m):
        img, _ = _res10_fraction(res10_face, comp)
        assert readable(img, name, *RES10_RANGE), (name, coloured_fraction(img))


# =============================================================================== sentinels
def _small_net(rng, bias=True, bn=False):
    layers = [N.conv("conv1", "data", 4, kernel=3, pad=1, bias=bias)]
    if bn:
        layers += [N.batchnorm("bn1", "conv1"), N.scale("sc1", "conv1", bias=bias)]
    layers += [N.relu("relu1", "conv1"), N.ip("fc1", "conv1", 6, bias=bias),
               N.relu("relu2", "fc1"), N.ip("fc2", "fc1", 5, bias=bias), N.softmax("prob", "fc2")]
    t = N.build(layers, (2, 3, 6, 6), rng)
    net = lrpfast.Net.from_text(t.text, t.weights)
    net.test_weights, net.test_text = t.weights, t.text
    return net, N.random_input((2, 3, 6, 6), rng)


def test_sentinels_no_longer_clash():
    net, x = _small_net(seeded_rng("sentinels"))
    assert lrpfast.TOP1 == -1 and lrpfast.TOP5 == -2      # classes keep the toolbox's codes
    assert net.top_layer(lrpfast.LOGITS).name == "fc2"
    assert net.top_layer(lrpfast.LAST_INNER_PRODUCT).name == "fc2"
    with pytest.warns(DeprecationWarning, match="top=-1 is deprecated"):
        assert net.top_layer(-1) is net.top_layer(lrpfast.LOGITS)
    with pytest.warns(DeprecationWarning, match="top=-2"):
        old = net.relevance(x, lrpfast.TOP5, "epsilon", top=-2)
    np.testing.assert_array_equal(old, net.relevance(x, -2, "epsilon"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        net.relevance(x, lrpfast.TOP1, "epsilon", top=lrpfast.LOGITS)
        assert net.top_layer(len(net.layers) - 3).name == net.layers[-3].name
    for bad in (-3, -len(net.layers)):   # a silent pick from the end: refused
        with pytest.raises(ValueError, match=f"top={bad}: negative layer indices are refused"):
            net.top_layer(bad)
        with pytest.raises(ValueError, match="negative layer indices"):
            net.relevance(x, 1, "epsilon", top=bad)


def test_composite_without_default_needs_no_rule_for_folded_layers():
    net, x = _small_net(seeded_rng("composite", "bn"), bn=True)
    comp = lrpfast.Composite(by_type={"Convolution": R.AlphaBeta(1, 0),
                                      "InnerProduct": R.Epsilon(1e-3)})
    full = lrpfast.Composite(default=R.Zero(), by_type=comp.by_type)
    np.testing.assert_array_equal(net.relevance(x, 1, comp), net.relevance(x, 1, full))
    assert "folded into 'conv1'" in net.describe_rules(comp)


# =============================================================================== conservation
# float32 sums of a few hundred terms: relative error ~1e-6; a leak or a wrong cut is >= 1e-2
CONS_RTOL = 1e-4


def test_conservation_bias_free_is_exact_at_every_layer():
    net, x = _small_net(seeded_rng("cons", "nobias"), bias=False)
    rep = net.conservation(x, -1, "z")
    logits = net.forward(x, blobs=["fc2"])["fc2"].astype(np.float64)
    np.testing.assert_allclose(rep.score, logits.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(rep.totals, np.broadcast_to(rep.score, rep.totals.shape),
                               rtol=CONS_RTOL)
    assert rep.first_departure is None and rep.blowup_layer is None
    assert rep.layers[0][0] == "fc2" and rep.layers[-1][0] == "conv1"
    np.testing.assert_allclose(rep.input_total, net.relevance(x, -1, "z").reshape(2, -1).sum(1),
                               rtol=CONS_RTOL)
    assert "fc2" in str(rep) and "<table>" in rep._repr_html_()


def test_conservation_names_the_layer_whose_bias_absorbs_relevance():
    net, x = _small_net(seeded_rng("cons", "bias"), bias=True)
    fc1 = net.forward(x, blobs=["fc1"])["fc1"].astype(np.float64)
    # independent: z_j = sum_i a_i w_ij + b_j; the z rule passes R_j (z_j - b_j) / z_j down
    W, bias = [np.asarray(v, np.float64) for v in net.test_weights["fc2"]]
    z = fc1 @ W.T + bias
    zk = z[np.arange(2), z.argmax(axis=1)]
    expected = zk - bias[z.argmax(axis=1)]
    rep = net.conservation(x, -1, "z", rtol=1e-3)
    np.testing.assert_allclose(rep.score, zk, rtol=1e-5)
    np.testing.assert_allclose(rep.totals[0], expected, rtol=CONS_RTOL)
    assert np.any(np.abs(expected - zk) > 1e-3 * np.abs(zk))   # the bias is not negligible
    assert rep.first_departure == "fc2"


class _Amplify(R.Epsilon):
    """A broken rule for the test: epsilon times 100 (relevance grows 100-fold)."""

    def linear(self, op, x, Rup, z=None):
        return super().linear(op, x, Rup, z) * np.float32(100.0)


def test_blow_up_gives_one_warning_naming_the_layer():
    net, x = _small_net(seeded_rng("cons", "blowup"))
    comp = lrpfast.Composite(default=R.Epsilon(), by_name={"fc1": _Amplify()})
    with pytest.warns(lrpfast.diagnostics.ConservationWarning, match="'fc1'") as rec:
        net.relevance(x, -1, comp)
    cw = lrpfast.diagnostics.ConservationWarning
    assert len([w for w in rec if issubclass(w.category, cw)]) == 1
    rep = net.conservation(x, -1, comp, warn=False)
    assert rep.blowup_layer == "fc1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.relevance(x, -1, "epsilon")            # a sound rule: no warning


def test_blow_up_is_diagnosed_once_per_rules_and_top(monkeypatch):
    """The diagnosis (a conservation pass) runs on the first call that blows up, not on every
    call with the same rules and top: it would double the cost of each batch-1 call."""
    net, x = _small_net(seeded_rng("cons", "blowup"))
    comp = lrpfast.Composite(default=R.Epsilon(), by_name={"fc1": _Amplify()})
    calls = []
    real = net.conservation
    monkeypatch.setattr(net, "conservation", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lrpfast.diagnostics.ConservationWarning)
        R1 = net.relevance(x, -1, comp)
        R2 = net.relevance(x, -1, comp)
    assert len(calls) == 1
    np.testing.assert_array_equal(R1, R2)


def test_res10_gamma_box_blow_up_is_located(res10_face):
    net, p, idx = res10_face
    m = np.asarray(RES10_MEAN, np.float32)
    comp = lrpfast.composite("epsilon_gamma_box", low=-m, high=255 - m)
    rep = net.conservation(p.x, idx, comp, top="mbox_conf", warn=False)
    assert rep.blowup_layer is not None and rep.blowup_layer.startswith("layer_")
    assert np.abs(rep.input_total[0]) > 10 * abs(rep.score[0])


# =============================================================================== CLI
def test_heatmaps_command_overlays_class_names_parameters_summary(tmp_path, capsys):
    from lrpfast import demo
    from lrpfast.cli import main
    d = demo.data_dir()
    info = demo.model_info()
    imgs = [str(p) for p in sorted((d / "images").glob("*.png"))[:2]]
    out = tmp_path / "o"
    args = ["heatmaps", "--model", str(d / info["prototxt"]), "--weights",
            str(d / info["caffemodel"]), "--images", *imgs, "--out", str(out), "--no-progress"]
    assert main(args + ["--rules", "cmp_alpha2_flat,epsilon_gamma_box", "--low", "-128",
                        "--high", "127", "--gamma", "0.5", "--classes", "-1", "3"]) == 0
    cap = capsys.readouterr()
    assert "no --mean" in cap.err
    assert cap.out.strip().splitlines()[-1].startswith("lrpfast heatmaps: 2 of 2 images")
    stem = os.path.splitext(os.path.basename(imgs[0]))[0]
    best = int((out / f"{stem}_top10scores.txt").read_text().split()[0])
    for rule in ("cmp_alpha2_flat", "epsilon_gamma_box"):
        for c in (best, 3):
            ov = np.asarray(Image.open(out / f"{stem}_{rule}_c{c}_overlay.png"))
            inp = np.asarray(Image.open(out / f"{stem}_as_inputted_into_the_dnn.png"))
            assert ov.shape == inp.shape
            assert (out / f"{stem}_{rule}_c{c}_heatmap.png").is_file()
    assert not list(out.glob("*_c-1_*"))
    mean = ",".join(str(v) for v in info["input"]["mean_bgr"])
    assert main(args + ["--mean", mean, "--classes", "-2", "--formats", "png"]) == 0
    cap = capsys.readouterr()
    assert "no --mean" not in cap.err and list(out.glob(f"{stem}_cmp_alpha2_flat_ctop5_*"))
    assert main(args + ["--rules", "epsilon_gamma_box"]) == 2
    assert "low" in capsys.readouterr().err


# =============================================================================== notebooks
def test_net_summary_and_progress_in_notebooks(monkeypatch):
    from lrpfast import demo
    from lrpfast import net as net_module
    net, _ = demo.load_bundled_model()
    h = net._repr_html_()
    assert h.startswith("<details>") and h.count("<tr>") == len(net.layers) + 1
    assert not net_module._in_notebook()
    monkeypatch.setattr(net_module, "_in_notebook", lambda: True)
    bar = net_module._Progress(3, "relevance", None)     # auto: on in a notebook
    assert bar.enabled
    bar.update()
    bar.close()


def test_describe_rules_columns_stay_aligned_with_long_names():
    rng = seeded_rng("describe", "long")
    long = "a_very_long_layer_name_from_a_real_model_conv"
    layers = [N.conv(long, "data", 4, kernel=3, pad=1), N.relu("r", long),
              N.ip("fc", long, 3)]
    t = N.build(layers, (1, 3, 5, 5), rng)
    table = lrpfast.Net.from_text(t.text, t.weights).describe_rules("epsilon").splitlines()[1:]
    starts = {line.index(kind) for line, kind in zip(table, ("type", "Convolution", "ReLU",
                                                              "InnerProduct"))}
    assert len(starts) == 1                                  # the type column starts at one place


def test_near_zero_score_is_not_a_blow_up():
    """A class whose logit is ~0: the bias share is a huge ratio of the score, but small against
    the top layer's outputs (blowup_scale), so no warning."""
    net, x = _small_net(seeded_rng("cons", "nearzero"))
    logits = net.forward(x, blobs=["fc2"])["fc2"]
    w = {k: [a.copy() for a in v] for k, v in net.test_weights.items()}
    w["fc2"][1][0] -= logits[0, 0] - 1e-3            # class 0 of image 0 now scores 1e-3
    net = lrpfast.Net.from_text(net.test_text, w)
    rep = net.conservation(x[:1], 0, "epsilon", warn=False)
    assert abs(rep.score[0] - 1e-3) < 1e-5
    assert np.abs(rep.input_total[0]) > 10 * np.abs(rep.score[0])    # the ratio is large
    assert rep.blowup_layer is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", lrpfast.diagnostics.ConservationWarning)
        net.relevance(x[:1], 0, "epsilon")


def test_demo_explains_undefined_mu_instead_of_dropping_it(tmp_path):
    from lrpfast import demo
    buf = io.StringIO()
    res = demo.run(tmp_path / "d", rules=["alpha1beta0"], scale=1, stream=buf)
    mus = [m for m, _ in res["scores"]["alpha1beta0"]["per_image"]]
    n_nan = int(np.sum(~np.isfinite(mus)))
    text = buf.getvalue()
    assert n_nan >= 1     # demo_06 is misclassified: its true class's relevance is all negative
    assert f"mean of {len(mus) - n_nan}/{len(mus)} images" in text
    assert "without positive relevance" in text


def test_heatmaps_command_explains_a_detector(res10_astronaut, tmp_path, capsys):
    from lrpfast.cli import main
    d, net, p = res10_astronaut
    Image.fromarray(skd.astronaut()).save(tmp_path / "astronaut.png")
    conf = net.forward(p.x, blobs=["mbox_conf"])["mbox_conf"][0]
    out = tmp_path / "o"
    assert main(["heatmaps", "--model", str(d / "deploy.prototxt"), "--weights",
                 str(d / "res10_300x300_ssd_iter_140000.caffemodel"), "--skip-unsupported",
                 "--top", "mbox_conf", "--images", str(tmp_path / "astronaut.png"),
                 "--resize", "resize", "--mean", "104,177,123", "--formats", "npy,overlay",
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    best = int(np.argmax(conf))                       # -1: the highest logit of mbox_conf
    R = np.load(out / f"astronaut_cmp_alpha2_flat_c{best}.npy")
    # same image pipeline (Pillow bilinear resize of the PNG), same seed: the same relevance
    np.testing.assert_allclose(R, net.relevance(p.x, best, top="mbox_conf")[0], rtol=1e-5,
                               atol=1e-6 * np.abs(R).max())
    assert (out / f"astronaut_cmp_alpha2_flat_c{best}_overlay.png").is_file()
