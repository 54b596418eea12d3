"""Benchmark: lrpfast's fully connected products, streamed AVX-512 kernels vs BLAS, in one run.

    python bench/bench_linear.py [--threads 2] [--repeats 7] [--batches 1,8,16,64,256,1024]

For the weight shapes of CaffeNet's and VGG-16's fully connected layers (random float32), times
linear_forward (y = x w^T) and linear_backward_data (dx = dy w) under set_linear_algorithm
"auto" (the streamed kernels where the CPU has AVX-512) and "blas" (OpenBLAS through lrpfast's
gemm), their repeats alternated, best of --repeats; checks that both agree to float32 rounding.
Then the same A/B on whole relevance passes (CaffeNet batch 16, VGG-16 batch 8, the bench nets
of bench_speed.py). Prints markdown tables; the latest are in bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_speed import build_model, timed_alternating

SHAPES = [("CaffeNet fc6", 4096, 9216), ("CaffeNet fc7 / VGG-16 fc7", 4096, 4096),
          ("CaffeNet fc8 / VGG-16 fc8", 1000, 4096), ("VGG-16 fc6", 4096, 25088)]


def ab(lrpfast, fn, repeats):
    """(best seconds under 'auto', under 'blas', results), the two alternating."""
    def under(algo):
        def run():
            lrpfast.set_linear_algorithm(algo)
            return fn()
        return run
    (ta, ra, _), (tb, rb, _) = timed_alternating([under("auto"), under("blas")], repeats)
    lrpfast.set_linear_algorithm("auto")
    return ta, tb, ra, rb


def agree(a, b, k):
    """max |a - b| over the float32 scale of a K-term sum (both are within ~K u of the truth)."""
    scale = np.abs(b).max() + 1e-30
    return float(np.abs(a - b).max() / scale), k * 2.0 ** -24


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", default="1,8,16,64,256,1024")
    ap.add_argument("--nets", default="caffenet,vgg16")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    import lrpfast
    from lrpfast._loader import _core

    lrpfast.set_num_threads(args.threads)
    info = lrpfast.info()
    print(f"lrpfast {info['version']}, BLAS {info['blas']}, {args.threads} threads, "
          f"fully connected kernels under 'auto': {info['linear_kernels']}\n")
    print("| layer (O x K) | rows | forward auto / blas ms | speed-up | transposed auto / blas ms "
          "| speed-up | agreement (max diff / max) |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, o, k in SHAPES:
        w = rng.standard_normal((o, k), np.float32)
        for n in (int(b) for b in args.batches.split(",")):
            x = rng.standard_normal((n, k), np.float32)
            dy = rng.standard_normal((n, o), np.float32)
            reps = args.repeats if n <= 256 else max(2, args.repeats // 3)
            fa, fb, ya, yb = ab(lrpfast, lambda x=x, w=w: _core.linear_forward(x, w, None), reps)
            ba, bb, da, db = ab(lrpfast, lambda dy=dy, w=w: _core.linear_backward_data(dy, w), reps)
            e1, _ = agree(ya, yb, k)
            e2, _ = agree(da, db, o)
            print(f"| {name} ({o} x {k}) | {n} | {fa * 1e3:.2f} / {fb * 1e3:.2f} | {fb / fa:.2f}x "
                  f"| {ba * 1e3:.2f} / {bb * 1e3:.2f} | {bb / ba:.2f}x | {max(e1, e2):.1e} |")
    print("\n| net | pass | auto s | blas s | speed-up | agreement (max diff / max) |")
    print("|---|---|---|---|---|---|")
    sizes = {"caffenet": (16, 227), "vgg16": (8, 224)}
    for kind in args.nets.split(","):
        proto, model = build_model(kind, args.out)
        net = lrpfast.Net(proto, model)
        b, h = sizes[kind]
        x = np.random.default_rng(1).standard_normal((b, 3, h, h)).astype(np.float32)
        for rules in ("epsilon", "cmp_alpha1_flat", "cmp_alpha2_flat"):
            ta, tb, ra, rb = ab(lrpfast, lambda n=net, x=x, r=rules: n.relevance(x, -1, rules=r),
                                max(3, args.repeats // 2))
            e, _ = agree(ra, rb, 1)
            print(f"| {kind} b{b} | {rules} | {ta:.3f} | {tb:.3f} | {tb / ta:.3f}x | {e:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
