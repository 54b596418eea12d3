"""lrpfast.dask.run on a LocalCluster of 2 worker processes x 1 thread: identical to the
single-process pipeline, survives a worker killed mid-run, resumes an interrupted run, loads
the Net once per worker; and ``lrpfast heatmaps --scheduler``.

Needs dask[distributed] and zarr (``pip install "lrpfast[dask]"``); skipped without them.
CI: .ci/steps/40-dask.sh.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
import cloudpickle  # noqa: E402  (comes with distributed)

import lrpfast  # noqa: E402
import lrpfast.dask  # noqa: E402
from lrpfast import pipeline  # noqa: E402
from lrpfast.cli import main as cli_main  # noqa: E402

pytestmark = pytest.mark.dask

# the hooks below run on the workers, which cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DATA = Path(lrpfast.__file__).parent / "data"
PROTO, WEIGHTS = str(DATA / "digits_cnn.prototxt"), str(DATA / "digits_cnn.caffemodel")
MEAN = tuple(json.loads((DATA / "model.json").read_text())["input"]["mean_bgr"])
RULES = ["epsilon", "cmp_alpha2_flat"]
KW = dict(weights=WEIGHTS, rules=RULES, classes=[-1, 2], batch=2, threads=1,
          preprocessing=lrpfast.Preprocessing.caffe(mean=MEAN), boxes=str(DATA / "images"))


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, env={"LRPFAST_NUM_THREADS": "1"}) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run of the same arguments (the reference)."""
    out = tmp_path_factory.mktemp("single") / "s.zarr"
    lrpfast.run(PROTO, str(DATA / "images"), out=out, **KW)
    return out


def _same_store(a, b):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for r in RULES:
        np.testing.assert_array_equal(ga["relevance"][r][:], gb["relevance"][r][:], err_msg=r)
    assert (Path(a) / "table.csv").read_text() == (Path(b) / "table.csv").read_text()


def test_identical_to_single_process_and_net_loaded_once(client, single, tmp_path):
    out = tmp_path / "d.zarr"
    res = lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=out, **KW)
    assert res.computed == 8 and res.chunks_computed == 4 and res.failed == 0
    _same_store(out, single)
    # again, for a second store: each worker keeps its Net (4 more chunks, no more loads)
    lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=tmp_path / "e.zarr", **KW)
    loads = client.run(lambda: lrpfast.dask.LOADS[0])
    assert sorted(loads.values()) == [1, 1]


def _kill_once(flag):
    def hook(index):
        if index == 1 and not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)   # the worker process dies while running chunk 1
    return hook


def test_worker_killed_mid_run_still_completes_identically(client, single, tmp_path):
    flag = tmp_path / "killed"
    out = tmp_path / "k.zarr"
    res = lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=out,
                           _hook=_kill_once(str(flag)), **KW)
    assert flag.exists()   # a worker did die
    assert res.computed == 8 and res.chunks_computed == 4
    _same_store(out, single)
    client.wait_for_workers(2, timeout=60)   # the nanny restarted it


def _fail_from(first, markers):
    """Chunks >= first fail (once the chunks before them are stored, so the run is
    interrupted part-way: some chunks done, some not)."""
    def hook(index):
        if index >= first:
            import time
            t = time.monotonic()
            while time.monotonic() - t < 30 and len(os.listdir(markers)) < first:
                time.sleep(0.05)
            raise RuntimeError(f"interrupted at chunk {index}")
    return hook


def test_interrupted_run_resumes(client, single, tmp_path):
    out = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match="interrupted at chunk"):
        lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=out, retries=0,
                         _hook=_fail_from(2, str(out / pipeline.MARKERS)), **KW)
    assert sorted(os.listdir(out / pipeline.MARKERS)) == ["00000000.json", "00000001.json"]
    assert not (out / "table.csv").exists()
    res = lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=out, **KW)
    assert res.chunks_computed == 2 and res.computed == 4   # only what was missing
    _same_store(out, single)


def test_shipped_model_and_heatmaps_scheduler(client, single, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    lrpfast.dask.run(client, PROTO, str(DATA / "images"), out=out, ship_model=True, **KW)
    _same_store(out, single)
    addr = client.scheduler.address
    argv = ["heatmaps", "--model", PROTO, "--weights", WEIGHTS, "--images", str(DATA / "images"),
            "--out", str(tmp_path / "o"), "--mean", ",".join(map(str, MEAN)), "--rules",
            "epsilon", "--formats", "png", "--store", str(tmp_path / "c.zarr"), "--batch", "2",
            "--threads", "1", "--scheduler", addr, "--ship-model", "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert "8 of 8 images explained" in capsys.readouterr().out
    assert len(list((tmp_path / "o").glob("*_heatmap.png"))) == 8
    ref = lrpfast.run(PROTO, str(DATA / "images"), out=tmp_path / "c1.zarr", **dict(
        KW, rules=["epsilon"], classes=[-1], boxes=None))
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    g1 = zarr.open_group(str(ref.store), mode="r")
    np.testing.assert_array_equal(g["relevance"]["epsilon"][:], g1["relevance"]["epsilon"][:])
    i = argv.index("--store")
    assert cli_main(argv[:i] + argv[i + 2:]) == 2   # --scheduler without --store
    assert "--scheduler needs --store" in capsys.readouterr().err
