"""Benchmark: the cost of deterministic mode, on each SIMD path, lrpfast against itself.

    python bench/bench_determinism.py [--threads 2] [--repeats 3] [--batch 8] [--nets vgg16,caffenet]
                                      [--concurrency]

For each path -- the CPU's native one, and (on x86 with AVX2) the AVX2 path forced the way an
AVX2-only CPU would run it (LRPFAST_SIMD=avx2 and OpenBLAS's Haswell kernels) -- a fresh process
loads the CaffeNet- and VGG-16-shaped nets of bench_speed.py (generated weights) and times, at
the given batch size, the forward pass and relevance under uniform eps and cmp_alpha2_flat with
deterministic mode off and on. The two modes' repeats alternate, so a slower spell of a shared
machine falls on both; best of --repeats. Prints a markdown table: seconds, and the ratio
deterministic / default. It also checks that deterministic mode keeps its promise on that path
(image 0 alone == image 0 in the batch, bit for bit). With --concurrency it also times calls
from several Python threads on one shared Net against the same calls made one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ROWS = [("forward", None), ("uniform eps", "epsilon"), ("cmp_alpha2_flat", "cmp_alpha2_flat")]


def measure(args) -> list:
    """One path (this process's environment): rows of (net, what, default s, deterministic s,
    alone == in batch)."""
    import numpy as np

    import lrpfast
    from bench_speed import build_model, timed_alternating

    lrpfast.set_num_threads(args.threads)
    out = []
    for kind in args.nets.split(","):
        proto, weights = build_model(kind, args.out)
        net = lrpfast.Net(proto, weights)
        x = np.random.default_rng(0).standard_normal(
            (args.batch,) + net.inputs[next(iter(net.inputs))], np.float32)
        for label, rules in ROWS:
            def run(det, rules=rules):
                lrpfast.set_deterministic(det)
                return net.forward(x) if rules is None else net.relevance(x, -1, rules=rules)
            (t0, _, _), (t1, r1, _) = timed_alternating(
                [lambda: run(False), lambda: run(True)], args.repeats)
            lrpfast.set_deterministic(True)
            alone = (net.forward(x[:1]) if rules is None
                     else net.relevance(x[:1], -1, rules=rules))
            lrpfast.set_deterministic(False)
            out.append((kind, label, t0, t1, bool(np.array_equal(alone[0], r1[0]))))
    return out


def concurrency(args) -> None:
    """Calls from several Python threads on one shared Net: throughput against the same calls
    made one after another, with lrpfast's pool at 1 thread (so Python threads are what spreads
    the work) and at --threads; and whether the results equal the serial ones bit for bit."""
    import threading
    import time

    import numpy as np

    import lrpfast
    from bench_speed import build_model

    proto, weights = build_model("caffenet", args.out)
    net = lrpfast.Net(proto, weights)
    x = np.random.default_rng(1).standard_normal((4,) + net.inputs["data"], np.float32)
    calls = 8
    print(f"\nConcurrent calls on one Net (CaffeNet, batch 4, cmp_alpha2_flat, {calls} calls):\n")
    print("| pool threads | Python threads | serial s | concurrent s | speed-up | same bits |")
    print("|---|---|---|---|---|---|")
    for pool in sorted({1, args.threads}):
        lrpfast.set_num_threads(pool)
        serial_out = net.relevance(x, -1, rules="cmp_alpha2_flat")
        for nthreads in (2, 4):
            t = time.perf_counter()
            for _ in range(calls):
                net.relevance(x, -1, rules="cmp_alpha2_flat")
            serial = time.perf_counter() - t
            outs: list = []

            def work(n):
                for _ in range(n):
                    outs.append(net.relevance(x, -1, rules="cmp_alpha2_flat"))
            ths = [threading.Thread(target=work, args=(calls // nthreads,))
                   for _ in range(nthreads)]
            t = time.perf_counter()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            conc = time.perf_counter() - t
            same = all(np.array_equal(o, serial_out) for o in outs)
            print(f"| {pool} | {nthreads} | {serial:.3f} | {conc:.3f} | {serial / conc:.2f} | "
                  f"{'yes' if same else 'NO'} |")
    lrpfast.set_num_threads(args.threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--nets", default="vgg16,caffenet")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--concurrency", action="store_true",
                    help="also: calls from several Python threads on one Net")
    ap.add_argument("--concurrency-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    if args.concurrency_only:
        concurrency(args)
        return 0
    import lrpfast

    paths = [("native (" + lrpfast.info()["simd_kernels"] + ", OpenBLAS "
              + lrpfast.info()["blas"].split("core=")[-1] + ")", {})]
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    if "avx2" in flags and "fma" in flags and lrpfast.info()["simd_kernels"] != "avx2":
        paths.append(("AVX2 forced (avx2, OpenBLAS Haswell)",
                      {"LRPFAST_SIMD": "avx2", "LRPFAST_BLAS_CORETYPE": "Haswell"}))
    print(f"batch {args.batch}, {args.threads} threads, best of {args.repeats} (modes alternated); "
          f"CPU: {lrpfast.info()['blas']}")
    print("\n| path | net | pass | default s | deterministic s | det / default | alone == in batch |")
    print("|---|---|---|---|---|---|---|")
    for name, env in paths:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads",
               str(args.threads), "--repeats", str(args.repeats), "--batch", str(args.batch),
               "--nets", args.nets, "--out", args.out]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        for kind, label, t0, t1, same in json.loads(res.stdout.strip().splitlines()[-1]):
            print(f"| {name} | {kind} | {label} | {t0:.3f} | {t1:.3f} | {t1 / t0:.2f} | "
                  f"{'yes' if same else 'NO'} |")
    if args.concurrency:
        concurrency(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
