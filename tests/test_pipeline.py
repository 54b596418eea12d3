"""lrpfast.run: the one-machine pipeline (inputs, Zarr store, table, mu / mu_w, resume, overlap,
torchvision pre-processing) and the heatmaps command on top of it.

The bundled demo model (64x64 digits, with VOC XML boxes beside its images) keeps this fast.
Store tests need zarr and skip without it (``pip install "lrpfast[dask]"``).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lrpfast
from lrpfast import pipeline
from lrpfast.cli import main as cli_main

from conftest import seeded_rng

DATA = Path(lrpfast.__file__).parent / "data"
PROTO, WEIGHTS = str(DATA / "digits_cnn.prototxt"), str(DATA / "digits_cnn.caffemodel")
INFO = json.loads((DATA / "model.json").read_text())
MEAN = tuple(INFO["input"]["mean_bgr"])
IMAGES = sorted(str(p) for p in (DATA / "images").glob("*.png"))
RULES = ["epsilon", "cmp_alpha2_flat"]


def _prep():
    return lrpfast.Preprocessing.caffe(mean=MEAN)


def _run(tmp, images=None, **kw):
    kw.setdefault("rules", RULES)
    kw.setdefault("classes", [-1, 3])
    kw.setdefault("batch", 3)
    kw.setdefault("preprocessing", _prep())
    return lrpfast.run(PROTO, IMAGES if images is None else images, weights=WEIGHTS, **kw)


def _store(path):
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(path), mode="r")
    return {k: g["relevance"][k][:] for k in RULES}


@pytest.fixture(scope="module")
def net():
    return lrpfast.Net(PROTO, WEIGHTS)


@pytest.fixture(scope="module")
def reference(net):
    """Per image: (x, top-layer values, {rule: (K, C, H, W)}) from direct Net calls, one image
    at a time, classes -1 and 3, in deterministic mode."""
    out = []
    before = lrpfast.get_deterministic()
    lrpfast.set_deterministic(True)
    try:
        _reference_images(net, out)
    finally:
        lrpfast.set_deterministic(before)
    return out


def _reference_images(net, out):
    for p in IMAGES:
        x = lrpfast.preprocess(p, (64, 64), mean=MEAN).x[None]
        top = net.forward(x, blobs=["fc6"])["fc6"][0]
        rel = {r: net.relevance_multi(x, [-1, 3], rules=r)[:, 0] for r in RULES}
        out.append((x, top, rel))


def _voc_boxes_0based(xml_path):
    """Boxes of an XML file read by hand (1-based inclusive -> 0-based), by object name."""
    out = {}
    for o in ET.parse(xml_path).getroot().iter("object"):
        b = [int(o.find("bndbox").find(t).text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
        out.setdefault(o.find("name").text, []).append(b)
    return out


# ----------------------------------------------------------------------------- the store
def test_store_and_table_match_direct_net_calls(tmp_path, reference, deterministic):
    pytest.importorskip("zarr")
    res = _run(tmp_path, out=tmp_path / "s.zarr", boxes=DATA / "images",
               class_names=INFO["class_names"])
    assert res.computed == len(IMAGES) and res.failed == 0 and res.chunks_computed == 3
    st = _store(tmp_path / "s.zarr")
    # batches of 3 vs one image at a time. Deterministic mode (the reference fixture and this
    # run): an image's maps are the same bits in any batch, on every SIMD path; in the default
    # mode they differ at float32 rounding, which near-cancelling sums amplify past any rtol
    for i, (_, top, rel) in enumerate(reference):
        for r in RULES:
            np.testing.assert_array_equal(st[r][i], rel[r], err_msg=f"{IMAGES[i]} {r}")
    rows = list(csv.DictReader(open(tmp_path / "s.zarr" / "table.csv")))
    assert len(rows) == len(IMAGES) * len(RULES) * 2 == len(res.table)
    assert tuple(rows[0]) == pipeline.TABLE_COLUMNS
    names = (tmp_path / "s.zarr" / "images.txt").read_text().split()
    assert names == [Path(p).stem for p in IMAGES]
    checked_mu = 0
    for row in rows:
        i = int(row["index"])
        x, top, rel = reference[i]
        k = 0 if row["selection"] == "-1" else 1
        best = int(np.argmax(top))
        cls = best if k == 0 else 3
        assert row["class"] == str(cls) and row["error"] == ""
        assert float(row["logit"]) == pytest.approx(float(top[cls]), rel=1e-5, abs=1e-5)
        assert row["top5"].split() == [str(c) for c in np.argsort(-top.astype(np.float64))[:5]]
        R = st[row["rule"]][i, k].astype(np.float64)
        assert float(row["relevance_sum"]) == pytest.approx(R.sum(), rel=1e-4, abs=1e-5)
        # mu / mu_w by hand: the demo images are 64x64 = the input (crop mode is the identity)
        boxes = _voc_boxes_0based(DATA / "images" / f"{names[i]}.xml")
        mask = np.zeros((64, 64), bool)
        for x0, y0, x1, y1 in boxes.get(INFO["class_names"][cls], []):
            mask[y0:y1 + 1, x0:x1 + 1] = True
        pos = np.maximum(R.sum(axis=0), 0)
        if mask.any() and pos.sum() > 0:
            mu = pos[mask].sum() / pos.sum()
            assert float(row["mu"]) == pytest.approx(mu, rel=1e-4, abs=1e-6)
            assert float(row["mu_w"]) == pytest.approx(mu * mask.size / mask.sum(), rel=1e-4)
            assert float(row["box_fraction"]) == pytest.approx(mask.mean())
            checked_mu += 1
        else:
            assert row["mu_w"] in ("", "nan")
    assert checked_mu >= len(IMAGES)   # every top-1 row has its class's box


def test_inputs_folder_glob_filelist_array_list_agree(tmp_path):
    pytest.importorskip("zarr")
    base = _run(tmp_path, str(DATA / "images"), out=tmp_path / "a.zarr", rules=["epsilon"])
    ref = _store_one(tmp_path / "a.zarr")
    lst = tmp_path / "list.txt"
    lst.write_text("# toolbox format\n" + "".join(f"{os.path.basename(p)} -1\n" for p in IMAGES))
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in IMAGES])
    for name, images, kw in [
            ("glob", str(DATA / "images" / "demo_*.png"), {}),
            ("list", str(lst), {"prefix": str(DATA / "images")}),
            ("array", arr, {}),
            ("pil", [Image.open(p) for p in IMAGES], {})]:
        r = _run(tmp_path, images, out=tmp_path / f"{name}.zarr", rules=["epsilon"], **kw)
        np.testing.assert_array_equal(_store_one(tmp_path / f"{name}.zarr"), ref, err_msg=name)
        assert [row["class"] for row in r.table] == [row["class"] for row in base.table]


def _store_one(path):
    zarr = pytest.importorskip("zarr")
    return zarr.open_group(str(path), mode="r")["relevance"]["epsilon"][:]


def test_filelist_classes_are_listed(tmp_path, net):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {i % 3}\n" for i, p in enumerate(IMAGES[:4])))
    res = lrpfast.run(PROTO, str(lst), weights=WEIGHTS, rules="epsilon", batch=2,
                      preprocessing=_prep())
    assert [r["selection"] for r in res.table] == ["listed"] * 4
    assert [r["class"] for r in res.table] == ["0", "1", "2", "0"]
    x = np.stack([lrpfast.preprocess(p, (64, 64), mean=MEAN).x for p in IMAGES[:4]])
    # the reference in the pipeline's batches of 2: a batch of 4 may round differently (OpenBLAS's
    # AVX2 kernels do), and the epsilon rule amplifies that past rtol
    R = np.concatenate([net.relevance(x[:2], [0, 1], rules="epsilon"),
                        net.relevance(x[2:], [2, 0], rules="epsilon")])
    sums = [float(r["relevance_sum"]) for r in res.table]
    np.testing.assert_allclose(sums, R.reshape(4, -1).sum(1, dtype=np.float64), rtol=1e-4)


def test_pictures_as_the_heatmaps_command_names_them(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {i}\n" for i, p in enumerate(IMAGES[:2])))
    res = lrpfast.run(PROTO, str(lst), weights=WEIGHTS, rules="epsilon", classes=["listed", -1],
                      preprocessing=_prep(), pictures=tmp_path / "pics",
                      picture_formats="png,overlay,npy")
    best = [r["class"] for r in res.table if r["selection"] == "-1"]
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    want = sorted(f"demo_0{i}_epsilon_c{c}{ext}" for i in range(2) for c in (i, best[i])
                  for ext in ("_heatmap.png", "_overlay.png", ".npy"))
    assert names == sorted(set(want))
    with pytest.raises(ValueError, match="picture_formats: unknown gif"):
        _run(tmp_path, pictures=tmp_path / "p2", picture_formats="png,gif")


def test_parquet_table_equals_the_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    res = _run(tmp_path, rules=["epsilon"], table=tmp_path / "t.parquet")
    _run(tmp_path, rules=["epsilon"], table=tmp_path / "t.csv")
    t = pq.read_table(tmp_path / "t.parquet").to_pydict()
    assert tuple(t) == pipeline.TABLE_COLUMNS and len(t["image"]) == len(res.table)
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    for i, row in enumerate(rows):
        assert t["image"][i] == row["image"] and t["class"][i] == row["class"]
        assert t["top5"][i] == row["top5"]
        for c in ("logit", "relevance_sum"):
            assert t[c][i] == float(row[c])   # repr() in the CSV round-trips exactly


def test_float16_store(tmp_path):
    pytest.importorskip("zarr")
    _run(tmp_path, out=tmp_path / "a.zarr", rules=["epsilon"])
    _run(tmp_path, out=tmp_path / "h.zarr", rules=["epsilon"], dtype="float16")
    a, h = _store_one(tmp_path / "a.zarr"), _store_one(tmp_path / "h.zarr")
    assert h.dtype == np.float16
    # float16 keeps 11 significant bits: relative error <= 2**-11 of each value (plus
    # subnormal flushing far below these maps' scale)
    np.testing.assert_allclose(h.astype(np.float32), a, rtol=2 ** -10, atol=1e-7)


# ----------------------------------------------------------------------------- resume
class _Stop(KeyboardInterrupt):
    pass


def test_interrupted_run_resumes_to_the_same_store(tmp_path, monkeypatch):
    pytest.importorskip("zarr")
    full = tmp_path / "full.zarr"
    _run(tmp_path, out=full, batch=2)
    calls = []
    orig = pipeline.Engine.compute

    def counting(self, x, listed):
        calls.append(x.shape[0])
        return orig(self, x, listed)
    monkeypatch.setattr(pipeline.Engine, "compute", counting)

    seen = []

    def stop_at_third_chunk(d, *_):   # Ctrl-C while the writer handles chunk 2
        seen.append(d.item.name)
        if len(seen) == 5:
            raise _Stop()
    part = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, out=part, batch=2, on_image=stop_at_third_chunk)
    done = sorted(os.listdir(part / pipeline.MARKERS))
    assert done == ["00000000.json", "00000001.json"]   # chunk 2 has no marker
    assert not (part / "table.csv").exists()
    n_before = sum(calls)
    calls.clear()
    res = _run(tmp_path, out=part, batch=2)
    assert res.chunks_computed == 2 and sum(calls) == 4 and res.computed == 4
    assert n_before + sum(calls) <= len(IMAGES) + 2 * 2   # at most the chunks in flight again
    for k in RULES:
        np.testing.assert_array_equal(_store(part)[k], _store(full)[k])
    assert (part / "table.csv").read_text() == (full / "table.csv").read_text()
    # a finished store: a rerun computes nothing
    calls.clear()
    assert _run(tmp_path, out=part, batch=2).chunks_computed == 0 and not calls


def test_chunk_without_marker_is_recomputed_whole(tmp_path):
    zarr = pytest.importorskip("zarr")
    s = tmp_path / "s.zarr"
    _run(tmp_path, out=s, batch=3)
    ref = _store(s)
    # a crash after part of chunk 1's data was written and before its marker
    g = zarr.open_group(str(s), mode="r+")
    g["relevance"]["epsilon"][3:5] = 7.0
    os.unlink(s / pipeline.MARKERS / "00000001.json")
    res = _run(tmp_path, out=s, batch=3)
    assert res.chunks_computed == 1 and res.computed == 3
    np.testing.assert_array_equal(_store(s)["epsilon"], ref["epsilon"])


def test_resume_with_other_settings_is_refused(tmp_path):
    pytest.importorskip("zarr")
    s = tmp_path / "s.zarr"
    _run(tmp_path, out=s, rules=["epsilon"])
    with pytest.raises(ValueError, match=r"other settings \(differs in: rules\)"):
        _run(tmp_path, out=s, rules=["cmp_alpha2_flat"])
    r = _run(tmp_path, out=s, rules=["cmp_alpha2_flat"], resume=False)   # starts over
    assert r.chunks_computed == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a Zarr store; refusing to overwrite"):
        _run(tmp_path, out=tmp_path / "mine", resume=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# ----------------------------------------------------------------------------- overlap
def test_decode_and_write_overlap_the_engine(tmp_path, monkeypatch):
    """Chunk k+1 is decoded while the engine computes chunk k, and the writer runs in its own
    thread: the engine thread does neither."""
    events = []
    lock = threading.Lock()
    orig_compute, orig_decode = pipeline.Engine.compute, pipeline.decode

    def compute(self, x, listed):
        with lock:
            events.append(("compute", time.perf_counter(), threading.current_thread().name))
        time.sleep(0.15)
        out = orig_compute(self, x, listed)
        with lock:
            events.append(("computed", time.perf_counter(), threading.current_thread().name))
        return out

    def decode(plan, item, shape):
        with lock:
            events.append(("decode " + item.name, time.perf_counter(),
                           threading.current_thread().name))
        return orig_decode(plan, item, shape)
    monkeypatch.setattr(pipeline.Engine, "compute", compute)
    monkeypatch.setattr(pipeline, "decode", decode)
    writers = []
    res = _run(tmp_path, batch=2, rules=["epsilon"], classes=[-1],
               on_image=lambda d, *a: writers.append(threading.current_thread().name))
    assert res.computed == len(IMAGES)
    main = threading.current_thread().name
    assert {n for e, _, n in events if e.startswith("compute")} == {main}
    assert all(n != main for e, _, n in events if e.startswith("decode"))
    assert set(writers) == {"lrpfast-writer"}
    first_end = next(t for e, t, _ in events if e == "computed")
    # the images of chunk 1 (demo_02, demo_03) were decoded before chunk 0's compute ended
    assert all(t < first_end for e, t, _ in events if e in ("decode demo_02", "decode demo_03"))
    assert res.engine_wait_s < res.engine_s


# ----------------------------------------------------------------------------- pre-processing
def _torchvision_reference(path, resize, crop):
    """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize, by hand with
    Pillow and numpy (float64)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    im = im.resize(size, Image.BILINEAR)
    a = np.asarray(im, np.float64) / 255.0
    H, W = a.shape[:2]
    top, left = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    a = a[top:top + crop, left:left + crop]
    a = (a - np.array(pipeline.TORCHVISION_MEAN)) / np.array(pipeline.TORCHVISION_STD)
    return a.transpose(2, 0, 1)


def test_torchvision_preprocessing(tmp_path):
    rng = seeded_rng("pipeline", "torchvision")
    # 448x320: short side to 256 gives a long side of 358.4, 358 whether rounded (ours) or
    # truncated (torchvision); 358 - 224 is even, so both centre crops start at 67
    img = (rng.random((320, 448, 3)) * 255).astype(np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(img).save(p)
    x = lrpfast.Preprocessing.torchvision()(str(p), (224, 224)).x
    ref = _torchvision_reference(p, 256, 224)
    # float32 arithmetic of (v/255 - m)/s vs float64: ~1e-6 relative
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    assert x.dtype == np.float32


def test_fast_decode_is_close_and_keeps_the_photo_geometry(tmp_path):
    rng = seeded_rng("pipeline", "draft")
    yy, xx = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([(np.sin(xx / 90.0 + c) + np.cos(yy / 70.0 - c)) * 60 + 128
                       for c in range(3)], axis=2)
    img = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
    p = tmp_path / "big.jpg"
    Image.fromarray(img).save(p, quality=90)
    full = lrpfast.Preprocessing.caffe(mean=MEAN)(str(p), (64, 64))
    fast = lrpfast.Preprocessing.caffe(mean=MEAN, draft=True)(str(p), (64, 64))
    assert fast.photo_size == full.photo_size == (1200, 1600)
    np.testing.assert_allclose(fast.scale, full.scale, rtol=1e-2)
    # DCT-domain reduction then bilinear vs bilinear alone: a few grey levels on a smooth photo
    assert np.abs(fast.x - full.x).mean() < 2.0
    assert np.abs(fast.x - full.x).max() < 24.0


def test_bad_inputs_name_the_argument(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        _run(tmp_path, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="matches no file"):
        _run(tmp_path, str(tmp_path / "nothing_*.jpg"))
    with pytest.raises(ValueError, match="have one name 'demo_00'"):
        _run(tmp_path, [IMAGES[0], IMAGES[0]])
    with pytest.raises(ValueError, match="dtype"):
        _run(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="classes"):
        _run(tmp_path, classes=[-3])
    with pytest.raises(ValueError, match="preprocessing"):
        _run(tmp_path, preprocessing="keras")
    # a missing or broken image fails alone, with its row saying why
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    msgs = []
    res = _run(tmp_path, [IMAGES[0], str(bad), str(tmp_path / "gone.png")], rules=["epsilon"],
               classes=[-1], on_error=lambda label, m: msgs.append((label, m)))
    assert res.failed == 2 and res.computed == 3
    assert msgs[0][0] == str(bad) and msgs[0][1].startswith("cannot read image")
    assert msgs[1] == (str(tmp_path / "gone.png"), "image file not found")
    assert [r["error"] != "" for r in res.table] == [False, True, True]


def test_progress_bar_shows_rate_and_eta(tmp_path, capsys):
    _run(tmp_path, rules=["epsilon"], classes=[-1], progress=True)
    err = capsys.readouterr().err
    assert f"{len(IMAGES)}/{len(IMAGES)}" in err and "img/s ETA" in err


# ----------------------------------------------------------------------------- the command
def test_heatmaps_command_store_table_boxes_and_resume(tmp_path, capsys):
    pytest.importorskip("zarr")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(INFO["class_names"]) + "\n")
    argv = ["heatmaps", "--model", PROTO, "--weights", WEIGHTS, "--images", str(DATA / "images"),
            "--out", str(tmp_path / "o"), "--mean", ",".join(map(str, MEAN)), "--rules",
            "epsilon", "--formats", "png", "--store", str(tmp_path / "s.zarr"), "--batch", "4",
            "--boxes", str(DATA / "images"), "--class-names", str(names), "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"{len(IMAGES)} of {len(IMAGES)} images explained" in out
    rows = list(csv.DictReader(open(tmp_path / "s.zarr" / "table.csv")))
    assert len(rows) == len(IMAGES) and all(r["mu"] not in ("", "nan") for r in rows)
    assert len(list((tmp_path / "o").glob("*_heatmap.png"))) == len(IMAGES)
    assert cli_main(argv) == 0   # resumed: nothing left to compute
    assert "0 of 8 images explained" in capsys.readouterr().out
    np.testing.assert_array_equal(_store_one(tmp_path / "s.zarr").shape, (8, 1, 3, 64, 64))


def test_heatmaps_command_torchvision_preprocessing(tmp_path, capsys):
    argv = ["heatmaps", "--model", PROTO, "--weights", WEIGHTS, "--images", IMAGES[0],
            "--out", str(tmp_path / "o"), "--rules", "epsilon", "--formats", "npy",
            "--preprocessing", "torchvision", "--size", "64", "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert "no --mean" not in capsys.readouterr().err
    R = np.load(next((tmp_path / "o").glob("demo_00_epsilon_c*.npy")))
    net = lrpfast.Net(PROTO, WEIGHTS)
    x = lrpfast.Preprocessing.torchvision(resize=64)(IMAGES[0], (64, 64)).x
    np.testing.assert_allclose(R, net.relevance(x[None], -1, rules="epsilon")[0], rtol=1e-5,
                               atol=1e-7)
    assert cli_main(argv + ["--std", "0,1,1"]) == 2
    assert "--std must be > 0" in capsys.readouterr().err


def test_float16_store_is_numpys_rounding_and_failed_images_are_zero(tmp_path):
    """The float16 store holds exactly numpy's float16 rounding of the float32 maps (the
    native conversion), and a failed image's slot stays zero beside the others."""
    pytest.importorskip("zarr")
    _run(tmp_path, out=tmp_path / "a.zarr", rules=["epsilon"])
    _run(tmp_path, out=tmp_path / "h.zarr", rules=["epsilon"], dtype="float16")
    a, h = _store_one(tmp_path / "a.zarr"), _store_one(tmp_path / "h.zarr")
    np.testing.assert_array_equal(h.view(np.uint16), a.astype(np.float16).view(np.uint16))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    res = _run(tmp_path, [IMAGES[0], str(bad), IMAGES[1]], out=tmp_path / "f.zarr",
               rules=["epsilon"], dtype="float16", batch=3)
    assert res.failed == 1
    f = _store_one(tmp_path / "f.zarr")
    assert f.dtype == np.float16 and not f[1].any()
    np.testing.assert_array_equal(f[[0, 2]].view(np.uint16), h[[0, 1]].view(np.uint16))
