"""The toolbox heatmap tool (lrpfast.explain): config / file list parsing, mean
files, pre-processing, output formats, and an end-to-end run of ``lrpfast explain``."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from lrpfast import caffe
from lrpfast import explain as ex
from lrpfast.cli import main as cli_main
from conftest import he_weights, seeded_rng

BASE_VALUES = {
    "param_file": "deploy.prototxt", "model_file": "w.caffemodel", "mean_file": "mean.binaryproto",
    "use_mean_file_asbinaryprotoblob": "1", "synsetfile": "synsets.txt", "lastlayerindex": "-2",
    "firstlayerindex": "0", "numclasses": "1000", "baseimgsize": "256",
    "standalone_outpath": "out", "standalone_rootpath": "imgs", "relpropformulatype": "54",
    "epsstab": "1", "alphabeta_beta": "0", "auxiliaryvariable_maxlayerindexforflatdistinconv": "4",
}


def config_text(values=None, drop=()):
    v = dict(BASE_VALUES, **(values or {}))
    lines = ["# toolbox config", "", "some comment line"]
    for k, val in v.items():
        if k in drop:
            continue
        lines += [f"# the {k}", k, val]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- config
def test_config_all_keys_and_comments():
    cfg = ex.parse_config(config_text({"epsstab": "0.25", "alphabeta_beta": "1"}), "c.txt")
    assert cfg.param_file == "deploy.prototxt" and cfg.model_file == "w.caffemodel"
    assert cfg.use_mean_file_asbinaryprotoblob == 1 and cfg.baseimgsize == 256
    assert cfg.lastlayerindex == -2 and cfg.firstlayerindex == 0 and cfg.numclasses == 1000
    assert cfg.relpropformulatype == 54 and cfg.epsstab == 0.25 and cfg.alphabeta_beta == 1.0
    assert cfg.auxiliaryvariable_maxlayerindexforflatdistinconv == 4
    assert cfg.standalone_outpath == "out" and cfg.synsetfile == "synsets.txt"
    opts = cfg.relpropopts()
    assert opts.relpropformulatype == 54 and opts.aux == 4 and opts.epsstab == 0.25


def test_config_key_lines_exact():
    # a key line is the key after strip; "# param_file" and "param_file x" are comments; the
    # line after a key line is its value even if it looks like a key
    text = ("# param_file\nparam_file x\n  param_file  \n  my.prototxt  \n"
            + config_text(drop=("param_file",)))
    cfg = ex.parse_config(text)
    assert cfg.param_file == "my.prototxt"


def test_config_optional_keys():
    cfg = ex.parse_config(config_text({"relpropformulatype": "0"},
                                      drop=("synsetfile",
                                            "auxiliaryvariable_maxlayerindexforflatdistinconv")))
    assert cfg.synsetfile == "" and cfg.auxiliaryvariable_maxlayerindexforflatdistinconv == -1


def test_config_missing_key():
    with pytest.raises(ex.ConfigError, match="c.txt: missing key baseimgsize"):
        ex.parse_config(config_text(drop=("baseimgsize",)), "c.txt")


@pytest.mark.parametrize("key,value,msg", [
    ("baseimgsize", "big", "key 'baseimgsize' needs an integer, got 'big'"),
    ("epsstab", "x", "key 'epsstab' needs a number"),
    ("use_mean_file_asbinaryprotoblob", "3", "must be 0, 1 or 2"),
    ("baseimgsize", "0", "must be > 0"),
    ("relpropformulatype", "7", "relpropformulatype 7 is not a known formula code"),
])
def test_config_bad_value(key, value, msg):
    text = config_text({key: value})
    with pytest.raises(ex.ConfigError, match=msg) as e:
        ex.parse_config(text, "c.txt")
    if "formula" not in msg:
        line = text.splitlines().index(key) + 2
        assert f"c.txt:{line}:" in str(e.value)


def test_config_duplicate_and_dangling_key():
    with pytest.raises(ex.ConfigError, match="given twice"):
        ex.parse_config(config_text() + "epsstab\n2\n")
    with pytest.raises(ex.ConfigError, match="no value line"):
        ex.parse_config(config_text(drop=("epsstab",)) + "epsstab")


def test_filelist(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("# images\na/b.jpg 281\n\nc.jpg -1\nd e.jpg -2\nf.jpg\n")
    items = ex.read_filelist(p, "root")
    assert [(os.path.relpath(a, "root"), c) for a, c, _ in items] == [
        ("a/b.jpg", 281), ("c.jpg", -1), ("d e.jpg", -2), ("f.jpg", -1)]
    assert [n for *_, n in items] == [2, 4, 5, 6]
    p.write_text("a.jpg 3\nb.jpg -3\n")
    with pytest.raises(ex.ConfigError, match=r"list.txt:2: class -3"):
        ex.read_filelist(p)


# ------------------------------------------------------------------------------- mean files
def test_mean_kinds(tmp_path):
    m = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    caffe.write_binaryproto(tmp_path / "m.binaryproto", m[None])
    np.testing.assert_array_equal(ex.read_mean(tmp_path / "m.binaryproto", 1), m)
    np.testing.assert_array_equal(ex.read_mean(tmp_path / "m.binaryproto", 2), m[::-1])
    # text: C, then H W, then each channel column-major (h + w*H), channels in BGR order
    vals = " ".join("%g" % v for c in range(3) for w in range(5) for h in range(4)
                    for v in [m[c, h, w]])
    (tmp_path / "m.txt").write_text(f"3\n4 5\n{vals}\n")
    np.testing.assert_array_equal(ex.read_mean(tmp_path / "m.txt", 0), m)
    (tmp_path / "bad.txt").write_text("3\n4 5\n1 2 3\n")
    with pytest.raises(ex.ConfigError, match="found 3 values"):
        ex.read_mean(tmp_path / "bad.txt", 0)
    with pytest.raises(ex.ConfigError, match="not found"):
        ex.read_mean(tmp_path / "nope", 1)


# ------------------------------------------------------------------------------- pre-processing
def test_resized_size():
    assert ex.resized_size(300, 200, 256) == (256, 171)      # 170.67 -> 171
    assert ex.resized_size(200, 300, 256) == (171, 256)
    assert ex.resized_size(100, 100, 64) == (64, 64)
    assert ex.resized_size(1000, 1, 10) == (10, 1)


def test_preprocess_resize_shapes():
    img = Image.fromarray(np.zeros((200, 300, 3), np.uint8))
    crop, x = ex.preprocess(img, 256, (227, 227))
    assert crop.shape == (227, 227, 3) and crop.dtype == np.uint8
    assert x.shape == (3, 227, 227) and x.dtype == np.float32


def test_preprocess_crop_pad_mean():
    rng = seeded_rng("explain", "pre")
    a = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)   # H=8, W=16: long side = base = 16
    mean = rng.uniform(0, 200, (3, 16, 16)).astype(np.float32)
    crop, x = ex.preprocess(Image.fromarray(a), 16, (12, 12), mean)
    # width 16 -> 12: centre crop from column 2; height 8 -> 12: 2 rows of edge padding each side
    exp = a[:, 2:14]
    exp = np.concatenate([exp[:1], exp[:1], exp, exp[-1:], exp[-1:]], axis=0)
    np.testing.assert_array_equal(crop, exp)
    np.testing.assert_array_equal(crop[0], crop[2]) and np.testing.assert_array_equal(crop[11],
                                                                                     crop[9])
    # BGR planes minus the mean's centre region (offset (16-12)//2 = 2)
    np.testing.assert_allclose(x, exp[:, :, ::-1].transpose(2, 0, 1) - mean[:, 2:14, 2:14])
    # odd padding: 3 rows short -> 1 before, 2 after
    a2 = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    crop2, _ = ex.preprocess(Image.fromarray(a2), 12, (12, 12))
    np.testing.assert_array_equal(crop2[1:10], a2)
    np.testing.assert_array_equal(crop2[0], a2[0])
    np.testing.assert_array_equal(crop2[10], a2[-1])
    np.testing.assert_array_equal(crop2[11], a2[-1])
    # a mean vector, and a mean image smaller than the input
    _, x3 = ex.preprocess(Image.fromarray(a2), 12, (12, 12), np.array([1, 2, 3], np.float32))
    np.testing.assert_allclose(x3[0], crop2[:, :, 2] - 1.0)
    with pytest.raises(ex.ConfigError, match="smaller"):
        ex.preprocess(Image.fromarray(a2), 12, (12, 12), np.zeros((3, 8, 8), np.float32))


# ------------------------------------------------------------------------------- outputs
def test_rawhm_layout_and_round_trip(tmp_path):
    R = np.array([[[1, 2, 3], [4, 5, 6]],                 # B
                  [[0.5, -0.25, 1e-7], [0, 0, 0]],        # G
                  [[1234567, 1 / 3, -2], [7, 8, 9]]],     # R
                 np.float32)
    text = ex.format_rawhm(R)
    assert text == ("3\n2 3\n"
                    "1.23457e+06 0.333333 -2\n7 8 9\n"
                    "0.5 -0.25 1e-07\n0 0 0\n"
                    "1 2 3\n4 5 6\n")
    ex.write_rawhm(tmp_path / "sub" / "a_rawhm.txt", R)
    back = ex.read_rawhm(tmp_path / "sub" / "a_rawhm.txt")
    assert back.shape == (3, 2, 3)
    np.testing.assert_allclose(back, R[::-1], rtol=1e-5)
    # the rawhm file is the toolbox's rawhm vector (to_rawhm) printed row by row
    from lrpfast.compat import to_rawhm
    np.testing.assert_allclose(back.transpose(0, 2, 1).reshape(3, -1), to_rawhm(R), rtol=1e-5)


def test_top10_format():
    s = np.zeros(12)
    s[[3, 7, 11]] = [0.5, 0.25, 0.125]
    text = ex.format_top10(s)
    lines = text.splitlines()
    assert len(lines) == 10 and lines[:4] == ["3 0.5", "7 0.25", "11 0.125", "0 0"]
    names = [f"n{i:08d} thing {i}" for i in range(12)]
    assert ex.format_top10(s, names).splitlines()[0] == "3 0.5 n00000003 thing 3"
    assert len(ex.format_top10(np.ones(4)).splitlines()) == 4


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def caffenet_files(models_dir, tmp_path_factory):
    from lrpfast import Net
    proto = models_dir / "bvlc_reference_caffenet" / "deploy.prototxt"
    if not proto.is_file():
        pytest.skip(f"{proto} missing")
    d = tmp_path_factory.mktemp("caffenet")
    w = he_weights(Net(str(proto)), seeded_rng("explain", "caffenet"))
    caffe.write_caffemodel(d / "w.caffemodel", w, str(proto))
    return proto, d / "w.caffemodel"


def _write_photo(path):
    skd = pytest.importorskip("skimage.data")
    Image.fromarray(skd.chelsea()).save(path, quality=90)   # 451 x 300 RGB


def test_explain_end_to_end(tmp_path, caffenet_files, capsys):
    proto, weights = caffenet_files
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    _write_photo(root / "cats" / "chelsea.jpg")
    Image.open(root / "cats" / "chelsea.jpg").rotate(90, expand=True).save(root / "tall.jpg")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    outside = tmp_path / "elsewhere.jpg"
    _write_photo(outside)
    mean = np.stack([np.full((256, 256), v, np.float32) for v in (104, 117, 123)])
    caffe.write_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    (tmp_path / "synsets.txt").write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))
    cfg = config_text({"param_file": str(proto), "model_file": str(weights),
                       "mean_file": str(tmp_path / "mean.binaryproto"),
                       "synsetfile": str(tmp_path / "synsets.txt"),
                       "standalone_outpath": str(tmp_path / "out"),
                       "standalone_rootpath": "imgs", "relpropformulatype": "54"})
    (tmp_path / "config.txt").write_text(cfg)
    (tmp_path / "list.txt").write_text(
        f"imgs/cats/chelsea.jpg -1\nimgs/broken.jpg 3\n{outside} -1\nimgs/tall.jpg -2\n"
        f"imgs/missing.jpg 1\n")
    # the toolbox's own style: the root is a bare folder name found inside the image paths,
    # which lie under the prefix; outputs keep the stub and the image's extension
    code = cli_main(["explain", str(tmp_path / "config.txt"), str(tmp_path / "list.txt"),
                     str(tmp_path), "--batch", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.jpg (file list line 2): cannot read image" in err
    assert "elsewhere.jpg (file list line 3): not under standalone_rootpath" in err
    assert "missing.jpg (file list line 5): image file not found" in err
    assert err.count("lrpfast: error:") == 3
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        f"imgs/{n}.jpg_{suffix}" for n in ("cats/chelsea", "tall") for suffix in
        ("rawhm.txt", "heatmap.png", "as_inputted_into_the_dnn.png", "top10scores.txt"))
    for name in ("imgs/cats/chelsea.jpg", "imgs/tall.jpg"):
        rawhm = ex.read_rawhm(out / f"{name}_rawhm.txt")
        assert rawhm.shape == (3, 227, 227) and np.all(np.isfinite(rawhm))
        assert np.abs(rawhm).sum() > 0
        heat = np.asarray(Image.open(out / f"{name}_heatmap.png"))
        assert heat.shape == (227, 227, 3) and heat.dtype == np.uint8
        inp = np.asarray(Image.open(out / f"{name}_as_inputted_into_the_dnn.png"))
        assert inp.shape == (227, 227, 3) and inp.std() > 10
        top = (out / f"{name}_top10scores.txt").read_text().splitlines()
        assert len(top) == 10
        scores = [float(l.split()[1]) for l in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        c = int(top[0].split()[0])
        assert top[0].split(None, 2)[2] == f"n{c:08d} class {c}"
    assert not (out / "imgs" / "broken.jpg_rawhm.txt").exists()
    # the heatmap png is render.toolbox_heatmap of the rawhm (RGB order -> rgb summation)
    from lrpfast import render
    rawhm = ex.read_rawhm(out / "imgs" / "tall.jpg_rawhm.txt")
    heat = np.asarray(Image.open(out / "imgs" / "tall.jpg_heatmap.png")).astype(int)
    assert np.abs(heat - render.toolbox_heatmap(rawhm, "rgb")).max() <= 1
    # the crop of the landscape photo: resized to 256x171 (rounded), width cropped, height
    # padded with its edge rows: (227-171)//2 = 28 rows above equal to the first image row
    inp = np.asarray(Image.open(out / "imgs/cats/chelsea.jpg_as_inputted_into_the_dnn.png"))
    assert np.array_equal(inp[0], inp[27]) and np.array_equal(inp[28 + 170], inp[226])
    assert not np.array_equal(inp[28], inp[29])

    # config errors -> 2, one message naming the key
    (tmp_path / "bad.txt").write_text(config_text(drop=("numclasses",)))
    assert cli_main(["explain", str(tmp_path / "bad.txt"), str(tmp_path / "list.txt")]) == 2
    assert "missing key numclasses" in capsys.readouterr().err
    # all good -> 0
    (tmp_path / "good.txt").write_text("tall.jpg 281\n")
    assert cli_main(["explain", str(tmp_path / "config.txt"), str(tmp_path / "good.txt"),
                     str(root), "--no-progress"]) == 0


def test_heatmaps_modern(tmp_path, caffenet_files, capsys):
    proto, weights = caffenet_files
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _write_photo(imgs / "cat.jpg")
    code = cli_main(["heatmaps", "--model", str(proto), "--weights", str(weights),
                     "--images", str(imgs), "--rules", "epsilon,toolbox:0", "--classes", "-1",
                     "281", "--out", str(tmp_path / "o"), "--mean", "104,117,123",
                     "--size", "256", "--formats", "png,rawhm,npy,input,top10",
                     "--no-progress"])
    assert code == 0, capsys.readouterr().err
    o = tmp_path / "o"
    best = int((o / "cat_top10scores.txt").read_text().split()[0])   # -1: named by its class
    for rule in ("epsilon", "toolbox-0"):
        for c in (best, 281):
            R = np.load(o / f"cat_{rule}_c{c}.npy")
            assert R.shape == (3, 227, 227)
            np.testing.assert_allclose(ex.read_rawhm(o / f"cat_{rule}_c{c}_rawhm.txt"), R[::-1],
                                       rtol=1e-4, atol=1e-6 * np.abs(R).max())
            assert (o / f"cat_{rule}_c{c}_heatmap.png").is_file()
    assert (o / "cat_as_inputted_into_the_dnn.png").is_file()
    assert (o / "cat_top10scores.txt").is_file()
    assert cli_main(["heatmaps", "--model", str(proto), "--weights", str(weights), "--images",
                     str(imgs), "--rules", "nosuchrule", "--out", str(o)]) == 2
    assert "--rules nosuchrule" in capsys.readouterr().err


def test_explain_numclasses_mismatch(tmp_path, caffenet_files, capsys):
    proto, weights = caffenet_files
    m = np.zeros((3, 227, 227), np.float32)
    caffe.write_binaryproto(tmp_path / "mean.binaryproto", m)
    (tmp_path / "c.txt").write_text(config_text({
        "param_file": str(proto), "model_file": str(weights), "numclasses": "10",
        "mean_file": str(tmp_path / "mean.binaryproto"), "synsetfile": ""}))
    (tmp_path / "l.txt").write_text("x.jpg -1\n")
    assert cli_main(["explain", str(tmp_path / "c.txt"), str(tmp_path / "l.txt")]) == 2
    err = capsys.readouterr().err
    assert "numclasses is 10 but layer 'fc8' (where relevance starts) has 1000" in err
    assert err.count("error:") == 1


@pytest.mark.parametrize("root, image, expected", [
    ("someimages", "prefix/imgs/someimages/cat.png", "out/someimages/cat.png"),
    ("imgs/some", "/data/imgs/some/a/b.jpg", "out/imgs/some/a/b.jpg"),
    ("/data/imgs", "/data/imgs/cat.png", "out/data/imgs/cat.png"),   # "out//data/..."
    ("img", "x/img_01/img/cat.png", "out/img_01/img/cat.png"),       # the first occurrence
])
def test_toolbox_output_base_follows_the_root_stub_rule(root, image, expected):
    assert ex.toolbox_output_base("out", root, image) == os.path.normpath(expected)


@pytest.mark.parametrize("root, image, match", [
    ("someimages", "prefix/other/cat.png", "does not occur in the image path"),
    ("imgs", "p/imgs/../../../etc/cat.png", "would leave standalone_outpath"),
    ("..", "p/../cat.png", "would leave standalone_outpath"),
    ("", "cat.png", "does not occur"),
])
def test_toolbox_output_base_refuses_paths_outside_the_output(root, image, match):
    with pytest.raises(ValueError, match=match):
        ex.toolbox_output_base("out", root, image)


def test_readme_toolbox_config_and_file_list_work_unchanged(tmp_path):
    """The README's "Coming from the LRP Toolbox" example: its config parses, and its file
    list maps to exactly the output files it lists."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Coming from the LRP Toolbox", 1)[1].split("\n## ", 1)[0]
    config, filelist, outputs = re.findall(r"```text\n(.*?)```", section, re.S)[:3]
    cfg = ex.parse_config(config, "README")
    assert cfg.standalone_rootpath == "someimages" and cfg.relpropformulatype == 54
    (tmp_path / "filelist.txt").write_text(filelist)
    items = ex.read_filelist(tmp_path / "filelist.txt", "./data/")
    assert [(p, c) for p, c, _ in items] == [("./data/someimages/cat.png", -1),
                                             ("./data/someimages/birds/robin.jpg", 15)]
    suffixes = ("rawhm.txt", "heatmap.png", "as_inputted_into_the_dnn.png", "top10scores.txt")
    written = [ex.toolbox_output_base(cfg.standalone_outpath, cfg.standalone_rootpath, p)
               + "_" + s for p, _, _ in items for s in suffixes]
    listed = [line.split()[0] for line in outputs.splitlines() if line.strip()]
    # the README lists all four files of the first image and the rawhm of the second
    assert listed == written[:5]
