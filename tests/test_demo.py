"""The bundled model, its images and the ``lrpfast demo`` command (end to end, fast).

Fresh held-out scenes come from the training script's own generator
(``scripts/train_bundled_model.py``, split "test": held-out digits, scene seed 4) fed with the
held-out digit pool shipped in ``tests/data/bundled_heldout_digits.npz``, so these tests need
neither scikit-learn nor torch.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
import time
from pathlib import Path

import lrpfast
import numpy as np
import pytest
from lrpfast import cli, demo, metrics

TESTS = Path(__file__).resolve().parent
DIGITS = TESTS / "data" / "bundled_heldout_digits.npz"
SCRIPT = TESTS.parent / "scripts" / "train_bundled_model.py"


@pytest.fixture(scope="module")
def bundled():
    return demo.load_bundled_model()


@pytest.fixture(scope="module")
def heldout():
    """300 freshly generated held-out scenes (about half a second)."""
    spec = importlib.util.spec_from_file_location("train_bundled_model", SCRIPT)
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    n = demo.model_info()["accuracy"]["tests_batch_n"]
    return T.make_split("test", n, T.load_digit_pools(heldout_file=DIGITS))


def test_package_data_is_reachable():
    """The model, its description and the images ship inside the package (importlib.resources
    sees them, as it would in an installed wheel)."""
    root = importlib.resources.files("lrpfast") / "data"
    info = json.loads((root / "model.json").read_text())
    for key in ("prototxt", "caffemodel", "mean_file"):
        assert (root / info[key]).is_file(), info[key]
    imgs = [p for p in (root / "images").iterdir() if p.name.endswith(".png")]
    xmls = [p for p in (root / "images").iterdir() if p.name.endswith(".xml")]
    assert len(imgs) >= 8 and len(xmls) == len(imgs)
    assert len(info["class_names"]) == 10
    assert Path(str(root)).resolve() == demo.data_dir()
    size = sum(Path(str(root / info[k])).stat().st_size for k in ("prototxt", "caffemodel"))
    assert size < 1 << 20                     # the model stays small (< 1 MiB)


def test_bundled_model_structure(bundled):
    net, info = bundled
    assert net.inputs == {"data": (3, 64, 64)}
    types = [l.type for l in net.layers]
    assert types.count("Convolution") == 4 and types.count("InnerProduct") == 2
    assert net.top_layer().name == info["top_layer"]
    mean = lrpfast.caffe.read_binaryproto(demo.data_dir() / info["mean_file"])
    assert np.allclose(mean.reshape(3, -1).mean(axis=1), info["input"]["mean_bgr"], atol=1e-3)


def test_bundled_model_reaches_documented_accuracy(bundled, heldout):
    net, info = bundled
    d = heldout
    x = demo.preprocess(d["images"], info)
    logits = net.forward(x, blobs=["fc6"])["fc6"]
    acc = float(np.mean(np.argmax(logits, axis=1) == d["labels"]))
    documented = info["accuracy"]["heldout"]
    assert acc >= documented - 0.05, (acc, documented)
    # the probabilities at the Softmax agree with the logits
    prob = net.forward(x[:4])
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(np.argmax(prob, 1), np.argmax(logits[:4], 1))


def test_bundled_heatmaps_are_object_centred(bundled, heldout):
    """On held-out scenes the CMP composite puts more positive relevance on the digit than a
    uniform map would (mean mu_w > 1), and the relevance is finite."""
    net, info = bundled
    d = heldout
    x = demo.preprocess(d["images"][:40], info)
    masks = np.stack([metrics.box_mask(b, (64, 64)) for b in d["boxes"][:40]])
    R = net.relevance(x, d["labels"][:40].tolist(), rules="cmp_alpha2_flat")
    assert np.all(np.isfinite(R))
    ev = metrics.evaluate(R.sum(axis=1), masks)
    assert np.nanmean(ev["mu_w"]) > 1.2


def test_bundled_images_and_boxes():
    samples = demo.load_bundled_images()
    assert len(samples) >= 8
    names = demo.model_info()["class_names"]
    for s in samples:
        assert s["rgb"].shape == (64, 64, 3) and s["rgb"].dtype == np.uint8
        assert 0 <= s["label"] < 10 and names[s["label"]] == s["class_name"]
        assert s["boxes"].shape == (1, 4) and 0 < s["mask"].mean() < 0.6


def test_demo_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo_out"
    t0 = time.perf_counter()
    rc = cli.main(["demo", "--out", str(out)])
    elapsed = time.perf_counter() - t0
    assert rc == 0
    text = capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    n_img = len(demo.load_bundled_images())
    assert "overview.png" in pngs and len(pngs) == n_img + 1
    for p in out.glob("*.png"):
        assert p.stat().st_size > 1000
    assert str(out.resolve()) in text
    for rule in demo.DEMO_RULES:
        m = re.search(rf"^\s*{rule}\s+([0-9.]+)\s+([0-9.]+)\s*$", text, re.MULTILINE)
        assert m, f"no score line for {rule} in:\n{text}"
        mu, mu_w = float(m.group(1)), float(m.group(2))
        assert 0.0 <= mu <= 1.0 and mu_w > 0.0
    assert elapsed < 30


def test_demo_run_returns_scores(tmp_path):
    res = demo.run(tmp_path, rules=("epsilon", "cmp_alpha1"), scale=1, verbose=False)
    assert set(res["scores"]) == {"epsilon", "cmp_alpha1"}
    for sc in res["scores"].values():
        assert 0.0 <= sc["mu"] <= 1.0 and np.isfinite(sc["mu_w"])
        assert len(sc["per_image"]) == len(res["labels"])
    # one grid per image: input + 2 heatmaps side by side (64 px each at scale 1)
    from PIL import Image
    with Image.open(res["files"][0]) as im:
        assert im.size[0] >= 3 * 64


def test_demo_rejects_unknown_rule(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--rules", "no_such_rule"]) == 1
    assert "no_such_rule" in capsys.readouterr().err
