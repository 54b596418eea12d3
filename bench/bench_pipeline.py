"""Benchmark: whole data sets. End-to-end pipeline rate vs the engine's own rate, and Dask
2 workers x 1 thread vs 1 worker x 1 thread.

    python bench/bench_pipeline.py [--nets caffenet,vgg16] [--images 256] [--threads 2]
                                   [--repeats 2] [--dask-images 64] [--no-dask] [--out bench/out]

Photos: ``--images`` JPEG photos of 1500x1000 (quality 90; ``--photo-size 500x375``: the
typical ImageNet / VOC photo) made once into ``bench/out/photos*/`` from the bundled demo images: a random crop of one, scaled up (bicubic)
to the photo size, under a smooth random colour gradient and pixel noise (there is no photo
set offline; these decode like real photos of that size: ~1.5 MP, 4:2:0 JPEG).
Nets: bench_speed.py's CaffeNet- and VGG-16-shaped nets (He-initialised weights).

1. Per net, ``--threads`` engine threads, rules ``cmp_alpha2_flat``, class -1, batch 16
   (CaffeNet) / 8 (VGG-16), alternating in one process, ``--repeats`` times each:
   - engine: the images decoded and pre-processed beforehand (in memory), then the pipeline's
     own per-batch engine call (``Engine.compute``: the forward pass for the logits and the
     relevance) over all of them;
   - end-to-end: ``lrpfast.run`` on the photo folder (decoding with Pillow in the pipeline's
     threads, Caffe pre-processing: short side 256, centre crop, mean), into a new Zarr store
     (float16) and table.
   (``--vgg-repeats`` for VGG-16, default 1: a pass over 256 photos takes minutes).
   End-to-end runs twice per repeat: exact decoding, and ``Preprocessing(draft=True)`` (JPEG
   decoded at a reduced scale, still covering the resize target). Reported: the rates (best of
   the repeats), their ratio to the engine's (target >= 90%), the median and range of the
   per-repeat ratios (each end-to-end run against the engine run just before it: on a VM
   whose speed drifts, the steadier figure), and the time the engine waited for
   decoding/writing.
2. Dask (CaffeNet, ``--dask-images`` photos, batch 8): a LocalCluster of 1 worker process x 1
   thread and one of 2 x 1 (LRPFAST_NUM_THREADS=1), both started first and warmed up (each
   worker loads its Net), then ``lrpfast.dask.run`` on each, alternating, ``--repeats`` times.
   Reported: images/s of each (best of the repeats) and the ratio (target >= 1.8x), best /
   best and per repeat (each 2 x 1 run against the 1 x 1 run just before it), with the tasks
   running at once (task time summed / wall time) and the CPU share a running task got
   (worker CPU time / task time): on a shared machine, the share says how much of the cores
   the workers actually had. ``--pin`` pins worker i's process (every thread: the engine's, the
   decoders', the writer's, Dask's) to core i, so that "1 worker x 1 thread" has one core as a
   cluster job with one CPU would. Unpinned, a lone worker's decode and writer threads also
   use the core the second worker would take, which flatters the 1 x 1 baseline (105% of a
   core); the scheduler, nannies and client stay unpinned either way.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_speed import build_model  # noqa: E402

BATCH = {"caffenet": 16, "vgg16": 8}
RULES = "cmp_alpha2_flat"


def make_photos(folder: str, n: int, size=(1500, 1000), seed: int = 0) -> list:
    """``n`` natural-looking JPEG photos (see the module docstring); kept between runs."""
    from PIL import Image
    import lrpfast
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"photo_{i:04d}.jpg") for i in range(n)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    src_dir = os.path.join(os.path.dirname(lrpfast.__file__), "data", "images")
    srcs = [np.asarray(Image.open(os.path.join(src_dir, f)).convert("RGB"))
            for f in sorted(os.listdir(src_dir)) if f.endswith(".png")]
    rng = np.random.default_rng(seed)
    W, H = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i, p in enumerate(paths):
        if os.path.isfile(p):
            continue
        s = srcs[i % len(srcs)]
        h, w = s.shape[:2]
        c = int(rng.integers(40, min(h, w) + 1))
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = Image.fromarray(s[y:y + c, x:x + c]).resize((W, H), Image.BICUBIC)
        a = np.asarray(crop, np.float32)
        g = rng.normal(0, 1, (3, 3)).astype(np.float32)
        grad = (g[:, 0] * xx[..., None] / W + g[:, 1] * yy[..., None] / H) * 30 + g[:, 2] * 10
        a = a * 0.8 + grad + rng.normal(0, 6, a.shape).astype(np.float32)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p, quality=90)
    return paths


def engine_rate(engine, xs, batch: int) -> float:
    """Images/s of the pipeline's engine call on pre-processed inputs in memory."""
    n = xs.shape[0]
    t = time.perf_counter()
    for a in range(0, n, batch):
        engine.compute(xs[a:a + batch], [-1] * (min(n, a + batch) - a))
    return n / (time.perf_counter() - t)


def bench_net(kind, photos, folder, args, lines):
    import lrpfast
    from lrpfast import pipeline
    proto, weights = build_model(kind, args.out)
    lrpfast.set_num_threads(args.threads)
    net = lrpfast.Net(proto, weights)
    batch = BATCH[kind]
    prep = lrpfast.Preprocessing.caffe(size=256)
    engine = pipeline.Engine(net, [(RULES, RULES)], [-1])
    shape = engine.input_shape
    t = time.perf_counter()
    xs = np.stack([prep(p, shape[1:]).x for p in photos])
    decode_s = (time.perf_counter() - t) / len(photos)
    modes = [("exact decode", False), ("fast decode", True)]
    best = {"engine": 0.0}
    waits = {}
    ratios: dict = {label: [] for label, _ in modes}   # per repeat, vs that repeat's engine
    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    try:
        engine_rate(engine, xs[:batch], batch)   # warm-up
        for rep in range(args.repeats if kind == "caffenet" else args.vgg_repeats):
            e_rate = engine_rate(engine, xs, batch)
            best["engine"] = max(best["engine"], e_rate)
            for label, draft in modes:
                store = os.path.join(tmp, f"{kind}_{rep}_{draft}.zarr")
                res = lrpfast.run(proto, folder, weights=weights, rules=RULES, classes=[-1],
                                  out=store, batch=batch, dtype="float16", net=net,
                                  preprocessing=lrpfast.Preprocessing.caffe(size=256,
                                                                            draft=draft))
                rate = res.computed / res.seconds
                ratios[label].append(rate / e_rate)
                if rate > best.get(label, 0.0):
                    best[label] = rate
                    waits[label] = res.engine_wait_s / res.seconds
                shutil.rmtree(store)
            print(f"  {kind} repeat {rep + 1}: " + ", ".join(f"{k} {v:.2f}"
                                                             for k, v in best.items()),
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for label, _ in modes:
        lines.append(f"| {kind} b{batch} | {len(photos)} | {best['engine']:.2f} | "
                     f"{best[label]:.2f} ({label}) | {best[label] / best['engine']:.1%} | "
                     f"{np.median(ratios[label]):.1%} ({min(ratios[label]):.0%}-"
                     f"{max(ratios[label]):.0%}) | {waits[label]:.1%} | "
                     f"{decode_s * 1e3:.1f} ms |")


def _pin_process(core: int) -> int:
    """Pin every thread of this process to ``core`` (threads started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:   # a thread that ended meanwhile
            pass
    return core


def _pin_workers(client) -> None:
    cores = sorted(os.sched_getaffinity(0))
    for i, addr in enumerate(sorted(client.scheduler_info()["workers"])):
        client.run(_pin_process, cores[i % len(cores)], workers=[addr])


def bench_dask(photos, folder, args, lines):
    import lrpfast
    import lrpfast.dask
    from distributed import Client, LocalCluster
    proto, weights = build_model("caffenet", args.out)
    sub = os.path.join(args.out, f"photos_dask_{args.dask_images}")
    os.makedirs(sub, exist_ok=True)
    for p in photos[:args.dask_images]:
        q = os.path.join(sub, os.path.basename(p))
        if not os.path.exists(q):
            os.symlink(os.path.abspath(p), q)
    kw = dict(weights=weights, rules=RULES, classes=[-1], batch=args.dask_batch, threads=1,
              dtype="float16",
              preprocessing=lrpfast.Preprocessing.caffe(size=256))
    env = {"LRPFAST_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if args.quiet_dask:   # Dask's bookkeeping intervals (event-loop tick, system and memory
        # monitors) lengthened: on 2 cores their CPU otherwise comes out of the workers' share
        import dask
        dask.config.set({"distributed.admin.tick.interval": "500ms",
                         "distributed.admin.system-monitor.interval": "2s",
                         "distributed.worker.memory.monitor-interval": "1s"})
    tmp = tempfile.mkdtemp(prefix="bench_dask_")
    best = {1: 0.0, 2: 0.0}
    busy = {1: "", 2: ""}
    last = {1: 0.0, 2: 0.0}
    ratios = []   # per repeat: the 2 x 1 run against the 1 x 1 run just before it
    try:
        for rep in range(args.repeats):
            for n in (1, 2):
                # one cluster at a time: an idle second cluster's scheduler, nannies and
                # heartbeats would take CPU from the measured one on a small machine
                with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env=env) as cl, Client(cl) as c:
                    if args.pin:
                        _pin_workers(c)
                    # warm-up: every worker has loaded its Net and run a chunk
                    lrpfast.dask.run(c, proto, photos[:args.dask_batch * n],
                                     out=os.path.join(tmp, f"w{n}_{rep}.zarr"), **kw)
                    store = os.path.join(tmp, f"d{n}_{rep}.zarr")
                    res = lrpfast.dask.run(c, proto, sub, out=store, **kw)
                last[n] = res.computed / res.seconds
                if last[n] > best[n]:
                    best[n] = last[n]
                    # tasks running at once, and the CPU share a running task got
                    busy[n] = (f"{res.task_s / res.seconds:.2f} tasks at once, "
                               f"{res.task_cpu_s / res.task_s:.0%} CPU each")
                shutil.rmtree(store)
            ratios.append(last[2] / last[1])
            print(f"  dask repeat {rep + 1}: 1x1 {last[1]:.2f}, 2x1 {last[2]:.2f} img/s "
                  f"({ratios[-1]:.2f}x)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pinned = ", workers pinned to a core each" if args.pin else ""
    lines.append(f"| CaffeNet b{args.dask_batch}, {args.dask_images} photos{pinned} | 1 worker x 1 thread "
                 f"{best[1]:.2f} img/s ({busy[1]}) | 2 workers x 1 thread {best[2]:.2f} img/s "
                 f"({busy[2]}) | {best[2] / best[1]:.2f}x best / best; per repeat "
                 f"{', '.join(f'{r:.2f}' for r in ratios)}, median {np.median(ratios):.2f}x "
                 f"(target >= 1.8x) |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="caffenet,vgg16")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dask-images", type=int, default=64)
    ap.add_argument("--dask-batch", type=int, default=8)
    ap.add_argument("--quiet-dask", action="store_true",
                    help="lengthen Dask's bookkeeping intervals (see bench/README.md)")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="Dask: pin worker i (all its threads) to core i")
    ap.add_argument("--vgg-repeats", type=int, default=1)
    ap.add_argument("--photo-size", default="1500x1000",
                    help="WxH of the generated photos (500x375: the typical ImageNet / VOC "
                         "photo)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    import lrpfast
    size = tuple(int(v) for v in args.photo_size.lower().split("x"))
    tag = "" if size == (1500, 1000) else f"_{size[0]}x{size[1]}"
    folder = os.path.join(args.out, f"photos{tag}_{args.images}")
    t = time.perf_counter()
    photos = make_photos(os.path.join(args.out, f"photos{tag}"), args.images, size=size)
    os.makedirs(folder, exist_ok=True)
    for p in photos:
        q = os.path.join(folder, os.path.basename(p))
        if not os.path.exists(q):
            os.symlink(os.path.abspath(p), q)
    print(f"{len(photos)} photos {size[0]}x{size[1]} ready in {time.perf_counter() - t:.1f} s; "
          f"{lrpfast.info().get('blas', '')}", flush=True)
    lines = ["| net | photos | engine img/s (in memory) | end-to-end img/s | ratio | ratio per "
             "repeat: median (range) | engine waiting | decode+pre-process per photo "
             "(1 thread) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in [k.strip() for k in args.nets.split(",") if k.strip()]:
        bench_net(kind, photos, folder, args, lines)
    if not args.no_dask:
        lines += ["", "| dask | 1 x 1 | 2 x 1 | speed-up |", "|---|---|---|---|"]
        bench_dask(photos, folder, args, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
