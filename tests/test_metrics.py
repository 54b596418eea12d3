"""lrpfast.metrics (Kohlbrenner et al. 2020) and lrpfast.boxes: hand-made cases."""
import math

import numpy as np
import pytest

from lrpfast import boxes as bx
from lrpfast import metrics as mt


# ------------------------------------------------------------------------------------ masks

def test_box_mask_inclusive_and_union_counted_once():
    m = mt.box_mask([(1, 2, 3, 4)], (10, 8))
    assert m.shape == (10, 8) and m.dtype == bool
    assert m.sum() == 3 * 3                       # x 1..3, y 2..4 inclusive
    assert m[2, 1] and m[4, 3] and not m[5, 3] and not m[4, 4]
    # two overlapping 4x4 boxes sharing a 2x2 patch: 16 + 16 - 4 pixels
    u = mt.box_mask([(0, 0, 3, 3), (2, 2, 5, 5)], (8, 8))
    assert u.sum() == 28
    # identical boxes: union = one box
    assert mt.box_mask([(0, 0, 3, 3), (0, 0, 3, 3)], (8, 8)).sum() == 16


def test_box_mask_clip_empty_and_single():
    m = mt.box_mask([(-5, -5, 1, 1)], (4, 4))
    assert m.sum() == 4
    assert mt.box_mask([], (3, 5)).sum() == 0
    assert mt.box_mask(np.zeros((0, 4)), (3, 5)).shape == (3, 5)
    assert mt.box_mask((0, 0, 0, 0), (3, 5)).sum() == 1
    assert mt.box_mask([(10, 10, 20, 20)], (4, 4)).sum() == 0      # outside
    assert mt.box_mask([(3, 0, 1, 2)], (4, 4)).sum() == 0          # xmax < xmin
    with pytest.raises(ValueError):
        mt.box_mask([(0, 0, 1)], (4, 4))


# ------------------------------------------------------------------------------------ mu, mu_w

@pytest.mark.parametrize("box", [(0, 0, 0, 0), (2, 3, 9, 7), (0, 0, 15, 11), (5, 0, 6, 11)])
def test_uniform_map_scores_one(box):
    h = np.full((12, 16), 0.7)
    m = mt.box_mask([box], h.shape)
    assert mt.mu_w(h, m) == pytest.approx(1.0)
    assert mt.mu(h, m) == pytest.approx(m.mean())


def test_all_relevance_inside_box():
    h = np.zeros((10, 10))
    h[2:5, 3:7] = np.arange(12).reshape(3, 4) + 1.0
    m = mt.box_mask([(3, 2, 6, 4)], h.shape)          # exactly that patch
    assert mt.mu(h, m) == 1.0
    assert mt.mu_w(h, m) == pytest.approx(100 / 12)
    mu_, muw = mt.mu_and_mu_w(h, m)
    assert (mu_, muw) == (mt.mu(h, m), mt.mu_w(h, m))


def test_negative_relevance_is_ignored():
    rng = np.random.default_rng(0)
    h = rng.random((9, 11))
    m = mt.box_mask([(2, 1, 6, 5)], h.shape)
    base = mt.mu(h, m), mt.mu_w(h, m)
    h2 = h.copy()
    h2[0, 0] = -50.0                                  # outside
    h2[3, 3] = -7.0                                   # inside: replaces a positive value ...
    h3 = h.copy()
    h3[3, 3] = 0.0                                    # ... which equals setting it to zero
    h3[0, 0] = 0.0
    assert mt.mu(h2, m) == pytest.approx(mt.mu(h3, m))
    # adding negative values on top of zeros anywhere leaves mu unchanged
    g = np.zeros((9, 11))
    g[m] = 1.0
    g[~m] = 0.25
    g_neg = g.copy()
    g_neg[0:2, :] -= 10.0                              # makes some context pixels negative
    g_ref = g.copy()
    g_ref[0:2, :] = 0.0
    assert mt.mu(g_neg, m) == pytest.approx(mt.mu(g_ref, m))
    # a separate negative-only map added at zero pixels
    z = h.copy()
    z[m] = 0.0
    zn = z.copy()
    zn[m] = -3.0
    assert mt.mu(zn, m) == mt.mu(z, m) == 0.0
    assert base[0] > 0


def test_channel_sum_before_mu():
    # (C, H, W): channels are summed first, so opposite-sign channels cancel
    R = np.zeros((3, 4, 4))
    R[0, 0, 0] = 2.0
    R[1, 0, 0] = -2.0                                  # pixel (0, 0) sums to 0
    R[2, 3, 3] = 1.0
    m = mt.box_mask([(0, 0, 0, 0)], (4, 4))
    assert mt.mu(R, m) == 0.0
    assert mt.mu(R, ~m) == 1.0


def test_undefined_cases_are_nan_without_warnings():
    import warnings
    m = mt.box_mask([(0, 0, 1, 1)], (4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(mt.mu(np.zeros((4, 4)), m))
        assert math.isnan(mt.mu_w(-np.ones((4, 4)), m))
        empty = np.zeros((4, 4), bool)
        assert mt.mu(np.ones((4, 4)), empty) == 0.0
        assert math.isnan(mt.mu_w(np.ones((4, 4)), empty))
        r = mt.evaluate(np.stack([np.zeros((4, 4)), np.ones((4, 4))]), np.stack([m, m]))
        assert r["n_undefined"] == 1 and math.isnan(r["mu"][0])
    with pytest.raises(ValueError):
        mt.mu(np.ones((4, 4)), np.ones((4, 5), bool))


def test_evaluate_array_and_list_agree():
    rng = np.random.default_rng(1)
    H = rng.standard_normal((5, 3, 8, 10))
    boxes = [(0, 0, 4, 4), (2, 1, 9, 7), (5, 5, 5, 5), (0, 0, 9, 7), (3, 0, 6, 2)]
    M = np.stack([mt.box_mask([b], (8, 10)) for b in boxes])
    ra = mt.evaluate(H, M)
    rl = mt.evaluate(list(H), list(M))
    for k in ("mu", "mu_w", "box_fraction", "r_in", "r_tot"):
        np.testing.assert_allclose(ra[k], rl[k], rtol=1e-12)
        assert ra[k].shape == (5,)
    for i in range(5):
        assert ra["mu"][i] == pytest.approx(mt.mu(H[i], M[i]))
        assert ra["mu_w"][i] == pytest.approx(mt.mu_w(H[i], M[i]))
    assert ra["box_fraction"][2] == pytest.approx(1 / 80)
    assert ra["box_fraction"][3] == 1.0 and ra["mu_w"][3] == pytest.approx(1.0)
    # images of different sizes in list form
    r = mt.evaluate([np.ones((4, 4)), np.ones((2, 6))],
                    [mt.box_mask([(0, 0, 1, 1)], (4, 4)), mt.box_mask([(0, 0, 2, 1)], (2, 6))])
    np.testing.assert_allclose(r["mu_w"], [1.0, 1.0])
    np.testing.assert_allclose(r["mu"], [0.25, 0.5])


def test_table_row_hand_made():
    mus = [0.9, 0.5, 0.2, 0.6, float("nan")]
    mws = [3.0, 1.5, 1.0, 0.5, float("nan")]
    fr = [0.10, 0.25, 0.40, 0.80, 0.05]
    row = mt.table_row(mus, mws, fr)
    assert set(row) == {"mu_w", "mu_le_025", "mu_le_05", "mu"}
    assert row["mu_w"] == pytest.approx((3.0 + 1.5 + 1.0 + 0.5) / 4)
    assert row["mu_le_025"] == pytest.approx((0.9 + 0.5) / 2)      # 0.25 is included
    assert row["mu_le_05"] == pytest.approx((0.9 + 0.5 + 0.2) / 3)
    assert row["mu"] == pytest.approx((0.9 + 0.5 + 0.2 + 0.6) / 4)
    empty = mt.table_row([0.3], [1.2], [0.9])
    assert math.isnan(empty["mu_le_025"]) and empty["mu"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        mt.table_row([1, 2], [1], [0.1, 0.2])


def test_mu_by_box_size_binning():
    mus = [0.1, 0.3, 0.5, 0.9, 0.7, float("nan")]
    fr = [0.0, 0.005, 0.015, 1.0, 0.995, 0.5]
    c, mean, n = mt.mu_by_box_size(mus, fr, bins=100)
    assert c.shape == mean.shape == n.shape == (100,)
    assert c[0] == pytest.approx(0.005) and c[-1] == pytest.approx(0.995)
    assert n[0] == 2 and mean[0] == pytest.approx(0.2)
    assert n[1] == 1 and mean[1] == pytest.approx(0.5)
    assert n[99] == 2 and mean[99] == pytest.approx(0.8)          # 1.0 falls in the last bin
    assert n.sum() == 5 and n[50] == 0 and math.isnan(mean[50])
    c4, m4, n4 = mt.mu_by_box_size([1.0, 0.0, 0.5], [0.1, 0.3, 0.26], bins=4)
    np.testing.assert_allclose(c4, [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_array_equal(n4, [1, 2, 0, 0])
    assert m4[1] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        mt.mu_by_box_size([0.5], [1.5])


# ------------------------------------------------------------------------------------ occlusion

def test_occlude_object_and_context():
    img = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    m = mt.box_mask([(1, 0, 2, 1)], (3, 4))
    fill = np.array([-1.0, -2.0])
    o = mt.occlude(img, m, fill, "object")
    c = mt.occlude(img, m, fill, "context")
    assert o.shape == img.shape and o.dtype == img.dtype
    assert np.all(o[0][m] == -1) and np.all(o[1][m] == -2)
    assert np.array_equal(o[:, ~m], img[:, ~m])
    assert np.all(c[0][~m] == -1) and np.array_equal(c[:, m], img[:, m])
    assert img[0, 0, 1] == 1.0                                     # input untouched
    assert np.all(mt.occlude(img, m, 0.0)[:, m] == 0)
    with pytest.raises(ValueError):
        mt.occlude(img, m, fill, "everything")
    with pytest.raises(ValueError):
        mt.occlude(img, m, [1.0, 2.0, 3.0])


def test_occlusion_drop_toy_logits():
    # class 0 = sum of pixels inside the object region, class 1 = sum outside
    m = mt.box_mask([(0, 0, 1, 1)], (4, 4))
    calls = []

    def logit_fn(x):
        calls.append(x.shape)
        assert x.ndim == 4
        s_in = x[:, :, m].sum(axis=(1, 2))
        s_out = x[:, :, ~m].sum(axis=(1, 2))
        return np.stack([s_in, s_out], axis=1)

    img = np.ones((3, 4, 4), dtype=np.float32)
    r = mt.occlusion_drop(logit_fn, img, m, 0, fill=0.0)
    assert calls == [(3, 3, 4, 4)]                                  # one batched call
    assert r["object_drop"] == pytest.approx(12.0)                  # 3 channels x 4 pixels
    assert r["context_drop"] == pytest.approx(0.0)
    assert r["object_area"] == pytest.approx(0.25) and r["context_area"] == pytest.approx(0.75)
    r1 = mt.occlusion_drop(logit_fn, img, m, 1, fill=np.array([0.5, 0.5, 0.5]))
    assert r1["object_drop"] == pytest.approx(0.0)
    assert r1["context_drop"] == pytest.approx(3 * 12 * 0.5)
    with pytest.raises(ValueError):
        mt.occlusion_drop(logit_fn, img, m, 2, fill=0.0)


# ------------------------------------------------------------------------------------ XML

VOC_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>000005.jpg</filename>
	<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation></source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
	</object>
	<object>
		<name>chair</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>375</ymax></bndbox>
	</object>
	<object>
		<name>diningtable</name><pose>Unspecified</pose><truncated>1</truncated>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500.0</xmax><ymax>375</ymax></bndbox>
	</object>
</annotation>
"""

ILSVRC_XML = """<annotation>
	<folder>n01440764</folder>
	<filename>n01440764_18</filename>
	<source><database>ILSVRC_2012</database></source>
	<size><width>250</width><height>187</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>n01440764</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>60</xmin><ymin>21</ymin><xmax>250</xmax><ymax>187</ymax></bndbox>
	</object>
</annotation>
"""


def test_read_voc(tmp_path):
    p = tmp_path / "000005.xml"
    p.write_text(VOC_XML)
    a = bx.read_voc(p)
    assert a["size"] == (500, 375, 3) and a["filename"] == "000005.jpg"
    assert [o["name"] for o in a["objects"]] == ["chair", "chair", "diningtable"]
    o0 = a["objects"][0]
    assert o0["box"] == (262, 210, 323, 338)              # 1-based -> 0-based
    assert o0["box_raw"] == (263.0, 211.0, 324.0, 339.0)
    assert (o0["difficult"], o0["truncated"]) == (0, 0)
    assert (a["objects"][1]["difficult"], a["objects"][1]["truncated"]) == (1, 1)
    assert a["objects"][2]["difficult"] == 0               # absent -> 0
    assert a["objects"][2]["box"] == (0, 0, 499, 374)      # whole image
    chairs = bx.boxes_for_class(a, "chair")
    assert chairs.shape == (2, 4) and chairs.dtype == np.int64
    assert bx.boxes_for_class(a, "chair", include_difficult=False).shape == (1, 4)
    assert bx.boxes_for_class(a, "dog").shape == (0, 4)
    assert mt.box_mask(bx.boxes_for_class(a, "diningtable"), (375, 500)).all()
    assert bx.read_voc(p, one_based=False)["objects"][0]["box"] == (263, 211, 324, 339)


def test_read_imagenet(tmp_path):
    p = tmp_path / "n01440764_18.xml"
    p.write_text(ILSVRC_XML)
    a = bx.read_imagenet(p)
    assert a["size"] == (250, 187, 3)
    assert a["objects"][0]["name"] == "n01440764"
    assert a["objects"][0]["box"] == (59, 20, 249, 186)    # xmax == width in the file
    m = mt.box_mask(bx.boxes_for_class(a, "n01440764"), (187, 250))
    assert m.sum() == (249 - 59 + 1) * (186 - 20 + 1)


def test_xml_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<annotation><size><width>5</width></size>")
    with pytest.raises(bx.AnnotationError, match="broken.xml.*malformed"):
        bx.read_voc(bad)
    nobox = tmp_path / "nobox.xml"
    nobox.write_text("<annotation><size><width>5</width><height>4</height></size>"
                     "<object><name>cat</name></object></annotation>")
    with pytest.raises(ValueError, match="nobox.xml.*bndbox"):
        bx.read_voc(nobox)
    nosize = tmp_path / "nosize.xml"
    nosize.write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(ValueError, match="nosize.xml.*size"):
        bx.read_imagenet(nosize)
    noxmax = tmp_path / "noxmax.xml"
    noxmax.write_text("<annotation><size><width>5</width><height>4</height></size>"
                      "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                      "<ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="noxmax.xml.*xmax"):
        bx.read_voc(noxmax)
    notanum = tmp_path / "nan.xml"
    notanum.write_text("<annotation><size><width>five</width><height>4</height></size>"
                       "</annotation>")
    with pytest.raises(ValueError, match="nan.xml.*width"):
        bx.read_voc(notanum)
    wrongroot = tmp_path / "root.xml"
    wrongroot.write_text("<notes/>")
    with pytest.raises(ValueError, match="root.xml"):
        bx.read_voc(wrongroot)


# ------------------------------------------------------------------------------------ transforms

def test_resize_and_pad_by_hand():
    # 500 x 375 image, baseimgsize 256, net 227:
    # r = 0.512 -> resized 256 x 192; width cropped by (256-227)//2 = 14,
    # height padded by (227-192)//2 = 17.
    g = bx.preprocess_geometry((500, 375, 3), 256, 227)
    assert g.resized == (256, 192) and g.out_size == (227, 227)
    assert g.scale == pytest.approx((0.512, 0.512)) and g.offset == (-14.0, 17.0)
    # VOC (51, 26, 250, 200) 1-based = 0-based (50, 25, 249, 199):
    # x: [50*.512-14, 250*.512-14) = [11.6, 114)   -> centres in it: 12..113
    # y: [25*.512+17, 200*.512+17) = [29.8, 119.4) -> 30..118
    out = bx.transform_boxes([(50, 25, 249, 199)], (500, 375), 256, 227)
    np.testing.assert_array_equal(out, [[12, 30, 113, 118]])
    # whole image: x clipped by the crop, y stays inside the unpadded band 17..208
    whole = bx.transform_boxes([(0, 0, 499, 374)], (500, 375), 256, 227)
    np.testing.assert_array_equal(whole, [[0, 17, 226, 17 + 192 - 1]])
    b, m = bx.transform_box_mask([(0, 0, 499, 374)], (500, 375), 256, 227)
    assert m.shape == (227, 227) and m.sum() == 227 * 192
    assert not m[:17].any() and not m[209:].any()


def test_resize_and_crop_both_axes_by_hand():
    # 500 x 480, base 256, net 227: resized 256 x round(245.76) = 246; crops 14 (x) and 9 (y)
    g = bx.preprocess_geometry((500, 480), 256, 227)
    assert g.resized == (256, 246) and g.offset == (-14.0, -9.0)
    assert g.scale == pytest.approx((0.512, 246 / 480))
    # box (100, 50, 399, 449):
    # x: [100*.512-14, 400*.512-14) = [37.2, 190.8)          -> 37..190
    # y: [50*.5125-9, 450*.5125-9) = [16.625, 221.625)       -> 17..221
    out, keep = bx.transform_boxes([(100, 50, 399, 449), (0, 0, 10, 10), (490, 470, 499, 479)],
                                   (500, 480), 256, 227, return_keep=True)
    # box 2: x [-14, 11*.512-14=-8.368) -> dropped (entirely in the cropped-away margin)
    # box 3: x [490*.512-14, 500*.512-14) = [236.88, 242) -> beyond 226 -> dropped
    np.testing.assert_array_equal(keep, [True, False, False])
    np.testing.assert_array_equal(out, [[37, 17, 190, 221]])


def test_portrait_pad_and_identity():
    # 300 x 600 portrait, base 256, net 224: resized 128 x 256; rows cropped by 16,
    # columns padded by 48; the full image maps to columns 48..175, all rows.
    out = bx.transform_boxes([(0, 0, 299, 599)], (300, 600), 256, 224)
    np.testing.assert_array_equal(out, [[48, 0, 175, 223]])
    # no resize, no crop: identity
    boxes = np.array([(0, 0, 0, 0), (3, 4, 7, 9)])
    np.testing.assert_array_equal(bx.transform_boxes(boxes, (10, 12)), boxes)
    # thin box shrunk below one pixel keeps the pixel holding its centre
    thin = bx.affine_boxes([(10, 10, 10, 10)], (0.1, 0.1), (0.0, 0.0), (5, 5))
    np.testing.assert_array_equal(thin, [[1, 1, 1, 1]])
    # rectangular net input
    g = bx.preprocess_geometry((100, 50), None, (60, 80))
    assert g.offset == (-20.0, 15.0) and g.out_size == (60, 80)


def test_class_mask_from_annotation(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(VOC_XML)
    a = bx.read_voc(p)
    m = bx.class_mask(a, "diningtable", 256, 227)
    assert m.shape == (227, 227) and m.sum() == 227 * 192
    assert bx.class_mask(a, "dog", 256, 227).sum() == 0
