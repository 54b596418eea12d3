"""Benchmark: a ResNet-50 loaded from ONNX, lrpfast vs zennit (PyTorch CPU), same weights.

    python bench/bench_onnx.py --threads 2 --batch 8 --repeats 3

Builds torchvision's ResNet-50 layout (tests/torchvision_stub: the same module names, so
zennit's ResNetCanonizer applies) with random weights and BatchNorm statistics calibrated on
random batches, exports it with torch.onnx in memory and loads it with ``Net.from_torch``;
zennit 0.5 runs the same torch model. Composite: lrpfast ``epsilon_plus_flat`` <-> zennit
``EpsilonPlusFlat`` with ``ResNetCanonizer`` (BatchNorm merged, residual sums proportional).
First checks the maps agree (max |a - b| / max |b| per image, zennit in float64 the arbiter,
zennit's own float32 error beside it), then times forward and relevance (best of --repeats, alternating the two
libraries so both see the same moments of a shared machine). Prints one markdown row each.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    import lrpfast
    import onnx_models   # adds the torchvision stand-in to sys.path
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    torch.set_num_threads(args.threads)
    lrpfast.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = onnx_models._randomise_bn(onnx_models.resnet50(width=64, classes=1000), gen)
    model = onnx_models._calibrate_bn(model, args.size, gen)
    x = np.random.default_rng(1).standard_normal((args.batch, 3, args.size, args.size),
                                                 dtype=np.float32)
    classes = list(range(args.batch))
    t0 = time.perf_counter()
    net = lrpfast.Net.from_torch(model, torch.from_numpy(x[:1]))
    load_s = time.perf_counter() - t0

    xt = torch.from_numpy(x)
    mask = torch.zeros((args.batch, 1000))
    mask[torch.arange(args.batch), torch.as_tensor(classes)] = 1.0

    def ours():
        return net.relevance(x, classes, "epsilon_plus_flat")

    def theirs():
        with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as a:
            _, rel = a(xt.clone().requires_grad_(True), lambda out: out * mask)
        return rel.detach().numpy()

    def ours_fwd():
        return net.forward(x)

    def theirs_fwd():
        with torch.no_grad():
            return model(xt).numpy()

    logit_err = float(np.abs(ours_fwd() - theirs_fwd()).max() / np.abs(theirs_fwd()).max())
    # agreement on 2 images, zennit in float64 the arbiter (its merged BatchNorm made the exact
    # identity, as in tests/test_onnx_zennit.py); zennit's own float32 error shows the conditioning
    from zennit.canonizers import MergeBatchNorm

    merge = MergeBatchNorm.merge_batch_norm

    def exact(modules, batch_norm):
        merge(modules, batch_norm)
        batch_norm.eps = 0.0

    MergeBatchNorm.merge_batch_norm = staticmethod(exact)
    m64 = copy.deepcopy(model).double()
    with Gradient(model=m64, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as a:
        _, R64 = a(xt[:2].double().requires_grad_(True), lambda out: out * mask[:2].double())
    R64 = R64.detach().numpy()
    Ro, Rt = ours(), theirs()
    MergeBatchNorm.merge_batch_norm = staticmethod(merge)

    def rel(a, b):
        return max(float(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max()) for i in range(2))
    agree = f"max rel vs zennit f64 {rel(Ro, R64):.1e} (zennit f32 {rel(Rt, R64):.1e}), 2 images"

    def best(fa, fb):
        ta, tb = [], []
        for _ in range(args.repeats):
            for f, t in ((fa, ta), (fb, tb)):
                s = time.perf_counter()
                f()
                t.append(time.perf_counter() - s)
        return min(ta), min(tb)

    fa, fb = best(ours_fwd, theirs_fwd)
    ra, rb = best(ours, theirs)
    print(f"lrpfast {lrpfast.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"ResNet-50 {args.size}x{args.size} batch {args.batch}, ONNX load {load_s:.2f} s")
    print("| net | pass (lrpfast / zennit) | lrpfast s | torch/zennit s | speed-up | agreement |")
    print("|---|---|---|---|---|---|")
    print(f"| ResNet-50 (ONNX) b{args.batch} | forward | {fa:.3f} | {fb:.3f} | {fb / fa:.2f}x | "
          f"logits {logit_err:.1e} |")
    print(f"| ResNet-50 (ONNX) b{args.batch} | epsilon_plus_flat / EpsilonPlusFlat + "
          f"ResNetCanonizer | {ra:.3f} | {rb:.3f} | {rb / ra:.2f}x | {agree} |")


if __name__ == "__main__":
    main()
