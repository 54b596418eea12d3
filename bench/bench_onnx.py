"""Benchmark: a ResNet-50 loaded from ONNX, lrpfast vs zennit (PyTorch CPU), same weights,
and the same network loaded from ONNX and from a caffemodel, side by side.

    python bench/bench_onnx.py --threads 2 --batch 8 --repeats 3
    python bench/bench_onnx.py --threads 2 --batch 8 --repeats 3 --only caffe

``--only caffe``: only the ONNX vs caffemodel rows (the importer's layer list written as a
prototxt, its weights as a caffemodel, both loaded in this process and timed alternating).

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
    ap.add_argument("--only", choices=["zennit", "caffe"], default=None,
                    help="run only the zennit rows or only the ONNX-vs-caffemodel rows")
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
    header = (f"lrpfast {lrpfast.__version__}, torch {torch.__version__}, {args.threads} "
              f"threads, ResNet-50 {args.size}x{args.size} batch {args.batch}, ONNX load "
              f"{load_s:.2f} s")
    if args.only == "caffe":
        print(header)
        onnx_vs_caffemodel(lrpfast, model, torch, net, x, classes, args)
        return

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

    fa, fb = best_of(args.repeats, ours_fwd, theirs_fwd)
    ra, rb = best_of(args.repeats, ours, theirs)
    print(header)
    print("| net | pass (lrpfast / zennit) | lrpfast s | torch/zennit s | speed-up | agreement |")
    print("|---|---|---|---|---|---|")
    print(f"| ResNet-50 (ONNX) b{args.batch} | forward | {fa:.3f} | {fb:.3f} | {fb / fa:.2f}x | "
          f"logits {logit_err:.1e} |")
    print(f"| ResNet-50 (ONNX) b{args.batch} | epsilon_plus_flat / EpsilonPlusFlat + "
          f"ResNetCanonizer | {ra:.3f} | {rb:.3f} | {rb / ra:.2f}x | {agree} |")
    if args.only is None:
        onnx_vs_caffemodel(lrpfast, model, torch, net, x, classes, args)


def best_of(repeats, fa, fb):
    """Best times of fa and fb over ``repeats`` rounds, the two alternating."""
    ta, tb = [], []
    for _ in range(repeats):
        for f, t in ((fa, ta), (fb, tb)):
            s = time.perf_counter()
            f()
            t.append(time.perf_counter() - s)
    return min(ta), min(tb)


def onnx_vs_caffemodel(lrpfast, model, torch, net, x, classes, args):
    """The ONNX net's layer list written as a prototxt and its weights as a caffemodel (what a
    Caffe user of the same network would load), both nets timed in this process."""
    import tempfile

    from lrpfast import caffe

    netdef, weights = lrpfast.onnx.read_onnx(
        lrpfast.onnx.export_torch(model, torch.from_numpy(x[:1])))
    msg = caffe.NetParameter(name=netdef.name)
    for name, shape in netdef.inputs:
        msg.input.append(name)
        msg.input_shape.add().dim.extend(shape)
    for ldef in netdef.layers:
        lp = msg.layer.add()
        lp.CopyFrom(ldef.param)
        lp.bottom.extend(ldef.bottoms)
        lp.top.extend(ldef.tops)
    with tempfile.TemporaryDirectory() as d:
        proto = caffe.write_prototxt(msg, os.path.join(d, "resnet50.prototxt"))
        model_path = os.path.join(d, "resnet50.caffemodel")
        caffe.write_caffemodel(model_path, weights, msg)
        t0 = time.perf_counter()
        cnet = lrpfast.Net(proto, model_path)
        load_s = time.perf_counter() - t0
    same_f = float(np.abs(net.forward(x) - cnet.forward(x)).max())
    same_r = float(np.abs(net.relevance(x, classes, "epsilon_plus_flat")
                          - cnet.relevance(x, classes, "epsilon_plus_flat")).max())
    fo, fc = best_of(args.repeats, lambda: net.forward(x), lambda: cnet.forward(x))
    ro, rc = best_of(args.repeats, lambda: net.relevance(x, classes, "epsilon_plus_flat"),
                     lambda: cnet.relevance(x, classes, "epsilon_plus_flat"))
    print(f"caffemodel load {load_s:.2f} s")
    print("| net | pass | from ONNX s | from caffemodel s | ONNX / caffemodel | max abs difference |")
    print("|---|---|---|---|---|---|")
    print(f"| ResNet-50 b{args.batch} | forward | {fo:.3f} | {fc:.3f} | {fo / fc:.3f} | {same_f:.1e} |")
    print(f"| ResNet-50 b{args.batch} | epsilon_plus_flat | {ro:.3f} | {rc:.3f} | {ro / rc:.3f} | "
          f"{same_r:.1e} |")


if __name__ == "__main__":
    main()
