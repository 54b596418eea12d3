"""GPU benchmark: images/s of LRP per composite on VGG-16 and CaffeNet shapes, batch 1..256.

    python bench/bench_gpu.py            # GPU run (and zennit on PyTorch CUDA when importable)

Without a usable GPU it says so plainly and prints the expected floor from a FLOP count: an LRP
pass costs about 3x (epsilon/flat: one forward + one transposed product per layer, plus the stored
forward) to 5x (alpha-beta: two signed products each way) the forward FLOPs; at a sustained
fraction of the GPU's fp32 peak that bounds the throughput.
"""
from __future__ import annotations

import argparse
import time

# (name, [(Cin, H, W, Cout, k, stride, pad, group)] convs, [fc (in, out)])
VGG16 = ("vgg16", [(3, 224, 224, 64, 3, 1, 1, 1), (64, 224, 224, 64, 3, 1, 1, 1),
                   (64, 112, 112, 128, 3, 1, 1, 1), (128, 112, 112, 128, 3, 1, 1, 1),
                   (128, 56, 56, 256, 3, 1, 1, 1)] + [(256, 56, 56, 256, 3, 1, 1, 1)] * 2 +
         [(256, 28, 28, 512, 3, 1, 1, 1)] + [(512, 28, 28, 512, 3, 1, 1, 1)] * 2 +
         [(512, 14, 14, 512, 3, 1, 1, 1)] * 3, [(25088, 4096), (4096, 4096), (4096, 1000)])
CAFFENET = ("caffenet", [(3, 227, 227, 96, 11, 4, 0, 1), (96, 27, 27, 256, 5, 1, 2, 2),
                         (256, 13, 13, 384, 3, 1, 1, 1), (384, 13, 13, 384, 3, 1, 1, 2),
                         (384, 13, 13, 256, 3, 1, 1, 2)], [(9216, 4096), (4096, 4096), (4096, 1000)])
# x forward FLOPs, the minimum count (as bench_speed.py): eps = forward + one transposed product;
# alpha1beta0 = + the z+ product; alpha2beta1 (the composite's convolutions) = + a transposed
# product of twice the depth (its dense layers and flat first layer need less: an upper bound)
COMPOSITES = {"epsilon": 2.0, "alpha1beta0": 3.0, "cmp_alpha2_flat": 4.0}
GPUS = {"H100": 51e12, "H200": 51e12, "A100": 19.5e12, "L4": 30e12, "T4": 8.1e12}  # fp32 peak
EFFICIENCY = 0.5  # sustained fraction of peak for cuBLAS SGEMM on these shapes


def forward_flops(net) -> float:
    _, convs, fcs = net
    f = 0.0
    for c, h, w, o, k, s, p, g in convs:
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        f += 2.0 * ho * wo * o * (c // g) * k * k
    return f + sum(2.0 * i * o for i, o in fcs)


def floor_table():
    print("No usable GPU here; expected throughput from a FLOP count "
          f"(sustained {EFFICIENCY:.0%} of fp32 peak, TF32 off):\n")
    print("| net | composite | GFLOP/image | " + " | ".join(f"{g} img/s" for g in GPUS) + " |")
    print("|---|---|---|" + "---|" * len(GPUS))
    for net in (VGG16, CAFFENET):
        for comp, mult in COMPOSITES.items():
            fl = forward_flops(net) * mult
            row = " | ".join(f"{peak * EFFICIENCY / fl:,.0f}" for peak in GPUS.values())
            print(f"| {net[0]} | {comp} | {fl / 1e9:.1f} | {row} |")


def gpu_run(batches, warmup=2, repeat=3):
    """img/s per (net, composite, batch): ``warmup`` untimed passes first (cuBLAS handle and
    heuristics, the caching allocator's first cudaMallocs, module loading), then the median of
    ``repeat`` timed passes."""
    import numpy as np

    from lrpfast import cuda, ops, rules

    m = cuda.require_gpu()
    print(f"device: {m.device_name(0)}, {m.blas_name()}")
    print("| net | composite | batch | img/s |\n|---|---|---|---|")
    for net in (VGG16, CAFFENET):
        rng = np.random.default_rng(0)
        layers = []
        for c, h, w, o, k, s, p, g in net[1]:
            op = ops.ConvOp(rng.standard_normal((o, c // g, k, k)).astype(np.float32) * 0.05,
                            np.zeros(o, np.float32), (c, h, w), s, p, 1, g)
            layers.append((cuda.make_cuda_op(op), (c, h, w)))
        for comp in COMPOSITES:
            rule = rules.Epsilon(0.01) if comp == "epsilon" else rules.AlphaBeta(
                2, 1) if comp == "cmp_alpha2_flat" else rules.AlphaBeta(1, 0)
            for n in batches:
                try:
                    xs = [cuda.to_device(rng.standard_normal((n,) + shp).astype(np.float32))
                          for _, shp in layers]
                    times = []
                    for it in range(warmup + repeat):
                        m.synchronize()
                        t0 = time.perf_counter()
                        for (op, _), x in zip(layers, xs):
                            z = op.fwd(x)
                            rule.linear(op, x, z)
                        m.synchronize()
                        if it >= warmup:
                            times.append(time.perf_counter() - t0)
                    dt = sorted(times)[len(times) // 2]
                    print(f"| {net[0]} | {comp} | {n} | {n / dt:,.1f} |")
                except RuntimeError as e:  # out of memory at large batches
                    print(f"| {net[0]} | {comp} | {n} | {str(e)[:40]} |")
                    break
    try:
        import torch  # noqa: F401
        import zennit  # noqa: F401
        print("\nzennit is importable: compare with bench/README.md's zennit recipe")
    except ImportError:
        print("\n(zennit/PyTorch not importable: no comparison row)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--warmup", type=int, default=2, help="untimed passes before timing")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes (the median is shown)")
    args = ap.parse_args()
    from lrpfast import cuda

    ok, why = cuda.available() if cuda.compiled() else (False, "lrpfast built without CUDA")
    if not ok:
        print(f"GPU benchmark not run: {why}\n")
        floor_table()
        return
    gpu_run([int(b) for b in args.batches.split(",")], args.warmup, args.repeat)


if __name__ == "__main__":
    main()
