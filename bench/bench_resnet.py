"""Benchmark: ResNet-50 written as a Caffe model, lrpfast vs zennit (PyTorch CPU), same weights.

    python bench/bench_resnet.py --threads 2 --batches 1,8 --repeats 3

Builds torchvision's ResNet-50 layout (tests/torchvision_stub, the module names zennit's
ResNetCanonizer knows) with random weights and BatchNorm statistics calibrated on random
batches (as bench_onnx.py), and writes the same weights as a Caffe model the way Caffe's
ResNets are written: Convolution (no bias) + BatchNorm (use_global_stats) + Scale (bias) +
ReLU, residual sums as Eltwise SUM, max pooling with round_mode FLOOR (torch's), a 7x7 average
pool and the InnerProduct classifier (`bench/out/resnet50.*`). lrpfast loads it with
``lrpfast.Net``; zennit 0.5 runs the torch model with its canonizers (BatchNorm merged into the
convolutions, ResNetCanonizer: residual sums split proportionally), lrpfast folds BatchNorm /
Scale and splits Eltwise sums proportionally as well. Composites:

* ``epsilon_alpha2_beta1_flat`` <-> ``EpsilonAlpha2Beta1Flat``
* ``epsilon_plus_flat`` <-> ``EpsilonPlusFlat``
* uniform ``epsilon`` (1e-6) <-> ``Epsilon(1e-6)`` on Conv2d / Linear plus zennit's base map

The forward runs twice: as the toolbox workflow's ``net.forward`` (keeping every activation for
``backward_relevance``, as the relevance passes do) and as the inference pass
``forward(keep=False)`` (freeing each activation after its last reader, as torch's no-grad
forward does); its "x own forward" is the ratio to the first.

Agreement first: on 2 images per batch size, max |a - b| / max |b| per image against zennit in
float64 (its merged BatchNorm made the exact identity), zennit's own float32 error beside it.
Then the times: best of --repeats, lrpfast and torch/zennit alternating (with lrpfast's forward
as a third, for the "x own forward" ratio of the same moments). Ratios: speed-up vs zennit
(targets >= 3x for the two alpha composites and epsilon_plus_flat), uniform eps / lrpfast's
own forward (target <= 2.2), lrpfast forward / torch forward (target <= 1).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

PAIRS = [("epsilon_alpha2_beta1_flat", "EpsilonAlpha2Beta1Flat"),
         ("epsilon_plus_flat", "EpsilonPlusFlat"),
         ("epsilon", "Epsilon")]


def caffe_resnet(model, size: int):
    """(prototxt text, {layer: [blobs]}) of a torchvision-layout ResNet with Bottleneck blocks."""
    import torch

    L = [f'name: "ResNet-50"\ninput: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {size} '
         f'dim: {size} }}']
    W: dict = {}

    def arr(t):
        return t.detach().numpy().astype(np.float32).copy()

    def conv_bn(name, bottom, conv, bn, relu):
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        L.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                 f'convolution_param {{ num_output: {conv.out_channels} kernel_size: {k} '
                 f'stride: {s} pad: {p} bias_term: false }} }}')
        L.append(f'layer {{ name: "bn_{name}" type: "BatchNorm" bottom: "{name}" top: "{name}" '
                 f'batch_norm_param {{ use_global_stats: true eps: {bn.eps} }} }}')
        L.append(f'layer {{ name: "scale_{name}" type: "Scale" bottom: "{name}" top: "{name}" '
                 f'scale_param {{ bias_term: true }} }}')
        if relu:
            L.append(f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" '
                     f'top: "{name}" }}')
        W[name] = [arr(conv.weight)]
        W[f"bn_{name}"] = [arr(bn.running_mean), arr(bn.running_var), np.ones(1, np.float32)]
        W[f"scale_{name}"] = [arr(bn.weight), arr(bn.bias)]
        return name

    x = conv_bn("conv1", "data", model.conv1, model.bn1, True)
    L.append(f'layer {{ name: "pool1" type: "Pooling" bottom: "{x}" top: "pool1" pooling_param '
             f'{{ pool: MAX kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR }} }}')
    x = "pool1"
    for li in range(1, 5):
        for bi, block in enumerate(getattr(model, f"layer{li}")):
            pre = f"res{li}_{bi}"
            a = conv_bn(f"{pre}_a", x, block.conv1, block.bn1, True)
            b = conv_bn(f"{pre}_b", a, block.conv2, block.bn2, True)
            c = conv_bn(f"{pre}_c", b, block.conv3, block.bn3, False)
            short = x if block.downsample is None else conv_bn(
                f"{pre}_proj", x, block.downsample[0], block.downsample[1], False)
            L.append(f'layer {{ name: "{pre}" type: "Eltwise" bottom: "{c}" bottom: "{short}" '
                     f'top: "{pre}" eltwise_param {{ operation: SUM }} }}')
            L.append(f'layer {{ name: "{pre}_relu" type: "ReLU" bottom: "{pre}" top: "{pre}" }}')
            x = pre
    with torch.no_grad():
        plane = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(
            model.relu(model.bn1(model.conv1(torch.zeros(1, 3, size, size))))))))).shape[-1]
    L.append(f'layer {{ name: "pool5" type: "Pooling" bottom: "{x}" top: "pool5" pooling_param '
             f'{{ pool: AVE kernel_size: {plane} stride: 1 }} }}')
    L.append(f'layer {{ name: "fc1000" type: "InnerProduct" bottom: "pool5" top: "fc1000" '
             f'inner_product_param {{ num_output: {model.fc.out_features} }} }}')
    L.append('layer { name: "prob" type: "Softmax" bottom: "fc1000" top: "prob" }')
    W["fc1000"] = [arr(model.fc.weight), arr(model.fc.bias)]
    return "\n".join(L) + "\n", W


def zennit_comp(name):
    import torch
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.torchvision import ResNetCanonizer

    can = [ResNetCanonizer()]
    if name == "Epsilon":
        return zc.LayerMapComposite(zc.layer_map_base() + [
            (torch.nn.Conv2d, zr.Epsilon(1e-6)), (torch.nn.Linear, zr.Epsilon(1e-6))],
            canonizers=can)
    return getattr(zc, name)(epsilon=1e-6, stabilizer=1e-6, canonizers=can)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)

    from bench_speed import match_peer_isa
    peer_isa = match_peer_isa()
    import torch

    import lrpfast
    import onnx_models   # adds the torchvision stand-in to sys.path
    from bench_speed import timed_alternating, timed_pair
    from lrpfast.caffe import write_model
    from zennit.attribution import Gradient
    from zennit.canonizers import MergeBatchNorm

    torch.set_num_threads(args.threads)
    lrpfast.set_num_threads(args.threads)
    # uniform eps blows up on a 50-layer net (as zennit's does): timed, not judged, here
    warnings.simplefilter("ignore", lrpfast.diagnostics.ConservationWarning)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = onnx_models._randomise_bn(onnx_models.resnet50(width=64, classes=1000), gen)
    model = onnx_models._calibrate_bn(model, args.size, gen)
    os.makedirs(args.out, exist_ok=True)
    text, weights = caffe_resnet(model, args.size)
    proto, caffemodel = write_model(os.path.join(args.out, "resnet50"), text, weights)
    net = lrpfast.Net(proto, caffemodel)

    print(f"lrpfast {lrpfast.__version__} (simd {lrpfast._core.simd_kernels()}, {lrpfast.info()['blas']}), torch {torch.__version__}, "
          f"{args.threads} threads, ResNet-50 {args.size}x{args.size} as a Caffe model "
          f"({len(net.layers)} layers), best of {args.repeats}, the two sides alternating; "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {peer_isa}")
    print()
    print("| batch | pass (lrpfast / zennit) | lrpfast s | torch/zennit s | speed-up | "
          "x own forward | agreement |")
    print("|---|---|---|---|---|---|---|")

    def best(fa, fb):
        (ta, _, _), (tb, _, _) = timed_pair(fa, fb, args.repeats)
        return ta, tb

    merge = MergeBatchNorm.merge_batch_norm

    def exact(modules, batch_norm):   # float64 arbiter: BatchNorm merged without zennit's eps
        merge(modules, batch_norm)
        batch_norm.eps = 0.0

    m64 = copy.deepcopy(model).double()
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(batch).standard_normal((batch, 3, args.size, args.size),
                                                         dtype=np.float32)
        classes = [int(c) for c in np.random.default_rng(batch + 1).integers(0, 1000, batch)]
        xt = torch.from_numpy(x)
        mask = torch.zeros((batch, 1000))
        mask[torch.arange(batch), torch.as_tensor(classes)] = 1.0

        def torch_fwd():
            with torch.no_grad():
                return model(xt).numpy()
        def ours_fwd():   # the logits (the net's output is the Softmax)
            return net.forward(x, blobs=["fc1000"])["fc1000"]
        logits = float(np.abs(ours_fwd() - torch_fwd()).max() / np.abs(torch_fwd()).max())
        fa, fb = best(ours_fwd, torch_fwd)
        print(f"| {batch} | forward | {fa:.3f} | {fb:.3f} | {fb / fa:.2f}x | 1.00 | "
              f"logits {logits:.1e} |", flush=True)

        def ours_infer():   # the inference pass: no activation kept for backward_relevance
            return net.forward(x, blobs=["fc1000"], keep=False)["fc1000"]
        same = np.array_equal(ours_infer(), ours_fwd())
        fi, fb = best(ours_infer, torch_fwd)
        print(f"| {batch} | forward(keep=False) | {fi:.3f} | {fb:.3f} | {fb / fi:.2f}x | "
              f"{fi / fa:.2f} | {'bit-identical' if same else 'DIFFERENT'} logits |", flush=True)
        k = min(2, batch)
        for ours_name, theirs_name in PAIRS:
            def ours(n=ours_name):
                return net.relevance(x, classes, rules=n)

            def theirs(n=theirs_name):
                with Gradient(model=model, composite=zennit_comp(n)) as a:
                    _, rel = a(xt.clone().requires_grad_(True), lambda out: out * mask)
                return rel.detach().numpy()

            MergeBatchNorm.merge_batch_norm = staticmethod(exact)
            try:
                with Gradient(model=m64, composite=zennit_comp(theirs_name)) as a:
                    _, R64 = a(xt[:k].double().requires_grad_(True),
                               lambda out: out * mask[:k].double())
            finally:
                MergeBatchNorm.merge_batch_norm = staticmethod(merge)
            R64 = R64.detach().numpy()
            Ro, Rt = ours(), theirs()

            def rel(a, b):
                return max(float(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max())
                           for i in range(k))
            agree = f"vs zennit f64 {rel(Ro, R64):.1e} (zennit f32 {rel(Rt, R64):.1e})"
            # the own forward alongside (a, b, forward, a, ...): the ratio of one moment
            (ra, _, _), (rb, _, _), (fo, _, _) = timed_alternating([ours, theirs, ours_fwd],
                                                                   args.repeats)
            print(f"| {batch} | {ours_name} / {theirs_name} | {ra:.3f} | {rb:.3f} | "
                  f"{rb / ra:.2f}x | {ra / fo:.2f} | {agree} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
