"""Benchmark: LRP speed on the CPU, lrpfast vs zennit (PyTorch CPU), same weights, same inputs.

    python bench/bench_speed.py [--threads 2] [--repeats 2] [--big] [--out bench/out]

Builds CaffeNet- and VGG-16-shaped nets with generated (He-initialised) weights, writes them as
caffemodels (bench/out/speed_*.{prototxt,caffemodel}), converts the same weights to PyTorch
modules, and in one run:

1. checks that the heatmaps agree (lrpfast composite vs the matching zennit composite, on the
   timed batch, same classes): relative L2 error and max error over max |R| per image;
2. times the forward pass and each composite (best of --repeats), images/s, the ratio to zennit
   and to lrpfast's own forward, achieved GFLOP/s over the minimum FLOP count (issue 5: the
   forward products, plus per linear layer one transposed product for eps/flat, or an extra
   z+ forward product and a transposed product of depth O (alpha1beta0) / 2*O (alpha2beta1)),
   against the sgemm peak (2048^3) measured through lrpfast's own gemm in the same run: once at
   the start, and alongside each row (its repeats alternate with lrpfast's and the peer's);
3. peak RSS of each measurement (VmHWM, reset through /proc/self/clear_refs before each);
4. ten classes of one image by relevance_multi vs ten single-class calls; 1 vs 2 threads;
   with --big, VGG-16 at batch 256 (chunked; peak RSS must stay under 6 GB).

Composite mapping (zennit 0.5): cmp_alpha2_flat <-> EpsilonAlpha2Beta1Flat, cmp_alpha1_flat <->
EpsilonPlusFlat, epsilon (uniform, eps 1e-6) <-> a LayerMapComposite with Epsilon(1e-6) on
Conv2d/Linear plus zennit's base map (Pass on activations, Norm on sums/avg pools). Max pooling is
the gradient in zennit (winner-take-all, first maximum) as in lrpfast's default; LRN (CaffeNet)
passes relevance unchanged in lrpfast, so it gets zennit's Pass rule (otherwise zennit would take
the LRN's gradient). zennit stabilises every denominator with 1e-6*sign (also z+ and the flat
count), lrpfast divides z+ exactly (0 -> 0): this differs only at |z| ~ 1e-6, below float32
rounding on these nets.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_load import peak_rss, vgg16_prototxt  # noqa: E402

COMPOSITES = [  # (lrpfast composite, zennit composite, label)
    ("epsilon", "Epsilon", "uniform eps"),
    ("cmp_alpha1_flat", "EpsilonPlusFlat", "cmp_alpha1_flat"),
    ("cmp_alpha2_flat", "EpsilonAlpha2Beta1Flat", "cmp_alpha2_flat"),
]


# ----------------------------------------------------------------------------- nets
def caffenet_prototxt() -> str:
    L = ['name: "CaffeNet"', 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 227 dim: 227 }']

    def conv(name, bottom, n, k, s=1, p=0, g=1):
        L.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                 f'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} '
                 f'group: {g} }} }}')
        L.append(f'layer {{ name: "relu{name[4:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')

    def pool(name, bottom):
        L.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                 f'pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}')

    def norm(name, bottom):
        L.append(f'layer {{ name: "{name}" type: "LRN" bottom: "{bottom}" top: "{name}" '
                 f'lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }} }}')

    conv("conv1", "data", 96, 11, s=4); pool("pool1", "conv1"); norm("norm1", "pool1")
    conv("conv2", "norm1", 256, 5, p=2, g=2); pool("pool2", "conv2"); norm("norm2", "pool2")
    conv("conv3", "norm2", 384, 3, p=1); conv("conv4", "conv3", 384, 3, p=1, g=2)
    conv("conv5", "conv4", 256, 3, p=1, g=2); pool("pool5", "conv5")
    bottom = "pool5"
    for name, n in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        L.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                 f'inner_product_param {{ num_output: {n} }} }}')
        if name != "fc8":
            L.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" '
                     f'top: "{name}" }}')
            L.append(f'layer {{ name: "drop{name[2:]}" type: "Dropout" bottom: "{name}" '
                     f'top: "{name}" dropout_param {{ dropout_ratio: 0.5 }} }}')
        bottom = name
    L.append(f'layer {{ name: "prob" type: "Softmax" bottom: "{bottom}" top: "prob" }}')
    return "\n".join(L) + "\n"


def he_weights(net, seed: int) -> dict:
    """He-initialised weights (activations keep their scale through the depth) and small biases,
    shaped after the layers of ``net`` (an lrpfast.Net built without weights)."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in net.layers:
        shapes = layer.expected_weights() if layer.type in ("Convolution", "InnerProduct") else []
        if not shapes:
            continue
        w = shapes[0]
        fan_in = int(np.prod(w[1:]))
        out[layer.name] = [rng.standard_normal(w, np.float32) * np.float32(np.sqrt(2.0 / fan_in)),
                           rng.standard_normal(shapes[1], np.float32) * np.float32(0.05)]
    return out


def build_model(kind: str, out_dir: str):
    import lrpfast
    from lrpfast.caffe import write_model

    text = vgg16_prototxt() if kind == "vgg16" else caffenet_prototxt()
    prefix = os.path.join(out_dir, f"speed_{kind}")
    if not os.path.exists(prefix + ".caffemodel"):
        os.makedirs(out_dir, exist_ok=True)
        skeleton = lrpfast.Net.from_text(text)
        write_model(prefix, text, he_weights(skeleton, seed=1 if kind == "vgg16" else 2))
    return prefix + ".prototxt", prefix + ".caffemodel"


def min_flops(net, n: int, shared: bool = False):
    """(forward FLOPs, {composite: relevance FLOPs incl. the forward}) for a batch of n; with
    shared=True also {composite: the part that does not depend on the explained class} (the
    forward and the z+ products), which relevance_multi computes once for all classes."""
    macs = []   # per linear layer, in net order
    for layer in net.layers:
        if layer.type == "Convolution":
            o, ho, wo = net.shapes[layer.tops[0]]
            c = net.shapes[layer.bottoms[0]][0]
            macs.append(n * o * ho * wo * (c // layer.group) * layer.kernel[0] * layer.kernel[1])
        elif layer.type == "InnerProduct":
            macs.append(n * layer.num_output * layer.K)
    is_conv = [layer.type == "Convolution" for layer in net.layers
               if layer.type in ("Convolution", "InnerProduct")]
    fwd = 2.0 * sum(macs)
    rel, common = {}, {}
    for comp, _, _ in COMPOSITES:
        extra, zplus = 0.0, 0.0
        for i, (m, conv) in enumerate(zip(macs, is_conv)):
            if comp == "epsilon" or not conv or i == 0:   # eps (dense), flat (first layer)
                extra += 2.0 * m
            elif comp == "cmp_alpha1_flat":               # z+ product + W+^T s
                extra += 2.0 * m * 2
                zplus += 2.0 * m
            else:                                         # z+ product + [W+ W-]^T [s+; s-]
                extra += 2.0 * m * 3
                zplus += 2.0 * m
        rel[comp] = fwd + extra
        common[comp] = fwd + zplus
    return (fwd, rel, common) if shared else (fwd, rel)


# ----------------------------------------------------------------------------- torch / zennit
def stub_torchvision():
    """zennit imports two torchvision names; give it stand-ins instead of installing torchvision
    (whose wheel would pull a CUDA build of torch)."""
    import torch

    if "torchvision" in sys.modules:
        return
    tv, models, resnet = (types.ModuleType(n) for n in
                          ("torchvision", "torchvision.models", "torchvision.models.resnet"))

    class Bottleneck(torch.nn.Module):
        pass

    class BasicBlock(torch.nn.Module):
        pass

    resnet.Bottleneck, resnet.BasicBlock = Bottleneck, BasicBlock
    tv.models, models.resnet = models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.resnet": resnet})


def torch_model(net):
    """The same net as a torch.nn.Sequential (eval mode) with the caffemodel's weights."""
    import torch
    from torch import nn

    mods = []
    for layer in net.layers:
        t = layer.type
        if t == "Convolution":
            w = layer.op.w
            m = nn.Conv2d(w.shape[1] * layer.group, w.shape[0], layer.kernel, layer.stride,
                          layer.pad, layer.dilation, layer.group, bias=layer.op.b is not None)
            m.weight.data = torch.from_numpy(w.copy())
            if layer.op.b is not None:
                m.bias.data = torch.from_numpy(layer.op.b.copy())
        elif t == "InnerProduct":
            if len(net.shapes[layer.bottoms[0]]) > 1:
                mods.append(nn.Flatten())
            m = nn.Linear(layer.K, layer.num_output)
            m.weight.data = torch.from_numpy(layer.op.w.copy())
            m.bias.data = torch.from_numpy(layer.op.b.copy())
        elif t == "ReLU":
            m = nn.ReLU()
        elif t == "Pooling":
            assert layer.method == "max"
            m = nn.MaxPool2d(layer.kernel, layer.stride, layer.pad, ceil_mode=layer.ceil_mode)
        elif t == "LRN":
            p = layer.param.lrn_param
            m = nn.LocalResponseNorm(int(p.local_size), float(p.alpha), float(p.beta), float(p.k))
        elif t == "Dropout":
            continue
        elif t == "Softmax":
            break
        else:
            raise ValueError(f"no torch twin for layer type {t}")
        mods.append(m)
    return nn.Sequential(*mods).eval()


def zennit_composite(name: str):
    import torch
    from zennit import composites as zc
    from zennit import rules as zr

    lrn_pass = [(torch.nn.LocalResponseNorm, zr.Pass())]   # lrpfast: LRN passes relevance
    if name == "Epsilon":
        return zc.LayerMapComposite(lrn_pass + zc.layer_map_base() + [
            (torch.nn.Conv2d, zr.Epsilon(1e-6)), (torch.nn.Linear, zr.Epsilon(1e-6))])
    cls = getattr(zc, name)
    return cls(epsilon=1e-6, stabilizer=1e-6, layer_map=lrn_pass)


def zennit_relevance(model, x, classes, comp_name):
    import torch
    from zennit.attribution import Gradient

    xt = torch.from_numpy(x).requires_grad_(True)
    mask = torch.zeros((x.shape[0], 1000), dtype=xt.dtype)
    mask[torch.arange(x.shape[0]), torch.as_tensor(classes)] = 1.0
    with Gradient(model=model, composite=zennit_composite(comp_name)) as attributor:
        _, rel = attributor(xt, lambda out: out * mask)
    return rel.detach().numpy()


# ----------------------------------------------------------------------------- measuring
def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_alternating(fns, repeats: int):
    """timed() for functions compared with each other, their repeats alternated (a, b, a, b,
    ...) so that a slower or faster spell of a shared machine falls on all alike. Returns a
    (best, result, peak RSS) per function."""
    out = [list(timed(f, 1)) for f in fns]
    for _ in range(repeats - 1):
        for o, f in zip(out, fns):
            o[0] = min(o[0], timed(f, 1)[0])
    return [tuple(o) for o in out]


def timed_pair(fa, fb, repeats: int):
    """timed_alternating for two functions whose ratio is reported."""
    return timed_alternating([fa, fb], repeats)


class GemmProbe:
    """One sgemm 2048^3 through lrpfast's gemm (its BLAS, its thread pool), to run alongside a
    measurement: the GEMM rate of the same moment, so that '% of gemm peak' does not drift with
    the machine's load. It is a 1x1 convolution (2048 channels in and out, a 32x64 plane),
    which is exactly one gemm call; not linear_forward, which may run lrpfast's own streamed
    kernels (set_linear_algorithm) rather than BLAS."""

    def __init__(self, n: int = 2048):
        from lrpfast import _core
        rng = np.random.default_rng(0)
        self.n, self.core = n, _core
        self.x = rng.standard_normal((1, n, 32, n // 32), np.float32)
        self.w = rng.standard_normal((n, n, 1, 1), np.float32)

    def __call__(self):
        return self.core.conv_forward(self.x, self.w, None, 1, 0, 1, 1)

    def rate(self, seconds: float) -> float:
        return 2.0 * self.n ** 3 / seconds / 1e9


def timed(fn, repeats: int):
    """(best time, result of the first call, peak RSS of the first call)."""
    gc.collect()
    reset_peak()
    t = time.perf_counter()
    res = fn()
    best = time.perf_counter() - t
    peak = peak_rss()
    for _ in range(repeats - 1):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best, res, peak


def gemm_peak(repeats: int = 5, n: int = 2048) -> float:
    """sgemm GFLOP/s through lrpfast's own gemm (its BLAS, its thread pool), best of repeats."""
    probe = GemmProbe(n)
    probe()
    return probe.rate(min(timed(probe, 1)[0] for _ in range(repeats)))


def torch_gemm_peak(repeats: int = 5, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(timed(lambda: a @ b, 1)[0] for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def agreement(r_ours: np.ndarray, r_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (relative L2 error, max|diff| / max|ref|)."""
    a = r_ours.reshape(r_ours.shape[0], -1).astype(np.float64)
    b = r_ref.reshape(r_ref.shape[0], -1).astype(np.float64)
    l2 = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    mx = np.abs(a - b).max(axis=1) / np.maximum(np.abs(b).max(axis=1), 1e-30)
    return l2, mx


TOL_L2, TOL_MAX = 1e-4, 1e-3   # float32 rounding through ~16 layers, different summation orders
AGREE_IMAGES = 4              # images checked against zennit in float64


def bench_net(kind, batch, args, rows, extra):
    import torch
    import lrpfast

    proto, model_path = build_model(kind, args.out)
    net = lrpfast.Net(proto, model_path)
    shape = net.inputs["data"]
    # the timed batch, and the AGREE_IMAGES images the agreement check uses at any batch size
    k = max(batch, AGREE_IMAGES)
    xa = np.random.default_rng(3).standard_normal((k,) + shape, np.float32) * np.float32(50)
    x = xa[:batch]
    model = torch_model(net)
    model64 = torch_model(net).double()
    xt = torch.from_numpy(x)
    label = {"vgg16": "VGG-16", "caffenet": "CaffeNet"}[kind]
    fwd_flops, rel_flops = min_flops(net, batch)
    R = args.repeats

    top = [l.name for l in net.layers if l.type == "InnerProduct"][-1]
    logits_a = net.forward(xa, blobs=[top])[top]
    classes_a = [int(c) for c in np.argmax(logits_a.reshape(len(xa), -1), axis=1)]
    logits, classes = logits_a[:batch], classes_a[:batch]

    def torch_forward():
        with torch.no_grad():
            return model(xt)
    probe = GemmProbe()
    (t_fwd, _, m_fwd), (t_tfwd, tl, m_tfwd), (t_g, _, _) = timed_alternating(
        [lambda: net.forward(x), torch_forward, probe], R)
    fwd_err = float(np.abs(tl.numpy() - logits.reshape(batch, -1)).max()
                    / np.abs(logits).max())
    pre = f"{label} b{batch}"
    rows.append((pre, "forward", t_fwd, t_tfwd, batch, fwd_flops, m_fwd, m_tfwd,
                 f"logits {fwd_err:.1e}", t_fwd, probe.rate(t_g)))
    for comp, zname, lab in COMPOSITES:
        (t_l, r_l, m_l), (t_z, r_z, m_z), (t_g, _, _) = timed_alternating(
            [lambda: net.relevance(x, classes, comp),
             lambda: zennit_relevance(model, x, classes, zname), probe], R)
        # arbiter: zennit in float64 on the first images; lrpfast (float32) must be as close to
        # it as zennit's own float32 result is (x2), or within the fixed float32 tolerance.
        # Winner-take-all max pooling is discontinuous: where two window values differ by
        # ~1e-7 relative, float32 rounding in either code may pick the other winner and move
        # that unit's relevance (seen: one window of 43k in CaffeNet's pool2 changed a map by
        # 2e-2). So one image of AGREE_IMAGES may differ; the worst image is reported.
        k = AGREE_IMAGES
        xk, ck = xa[:k], classes_a[:k]
        r_lk = r_l[:k] if batch >= k else net.relevance(xk, ck, comp)
        r_zk = r_z[:k] if batch >= k else zennit_relevance(model, xk, ck, zname)
        r64 = zennit_relevance(model64, xk.astype(np.float64), ck, zname)
        l2, mx = agreement(r_lk, r64)
        l2z, mxz = agreement(r_zk, r64)
        good = (l2 <= np.maximum(TOL_L2, 2 * l2z)) & (mx <= np.maximum(TOL_MAX, 2 * mxz))
        ok = "ok" if good.sum() >= k - 1 else "DIFFER"
        i = int(np.argmax(l2))
        l2lz = float(agreement(r_l, r_z)[0].max())
        l2, mx, l2z, mxz = float(l2[i]), float(mx[i]), float(l2z[i]), float(mxz[i])
        ok += f" ({int(good.sum())}/{k} images)"
        rows.append((pre, f"{lab} / {zname}", t_l, t_z, batch, rel_flops[comp], m_l, m_z,
                     f"{ok}: vs f64 L2 {l2:.0e} (zennit f32 {l2z:.0e}), max {mx:.0e} "
                     f"({mxz:.0e}); vs zennit L2 {l2lz:.0e}", t_fwd, probe.rate(t_g)))
        print(f"  {pre} {lab}: lrpfast {t_l:.3f} s, zennit {t_z:.3f} s, agreement {ok} "
              f"({rows[-1][8]})", file=sys.stderr, flush=True)

    if kind == "vgg16":   # ten classes of one image: one forward pass vs ten calls
        x1 = x[:1]
        cls10 = [int(c) for c in np.argsort(-logits[0].ravel())[:10]]
        f1, rel1, shared1 = min_flops(net, 1, shared=True)
        for comp, _, lab in COMPOSITES:
            (t_multi, r_multi, _), (t_sep, r_sep, _) = timed_pair(
                lambda: net.relevance_multi(x1, cls10, comp),
                lambda: [net.relevance(x1, c, comp) for c in cls10], R)
            same = max(float(np.abs(r_multi[k] - r_sep[k]).max() / np.abs(r_sep[k]).max())
                       for k in range(10))
            # FLOP-count bound on the ratio: ten calls cost 10 x rel, one multi call costs the
            # class-independent part (forward, z+ products) once and the rest ten times
            per_class = rel1[comp] - shared1[comp]
            bound = 10 * rel1[comp] / (shared1[comp] + 10 * per_class)
            extra.append(f"| {label}, 1 image, 10 classes, {lab} | relevance_multi "
                         f"{t_multi:.3f} s | 10 x relevance {t_sep:.3f} s | "
                         f"{t_sep / t_multi:.2f}x (target >= 2x; FLOP bound {bound:.2f}x; "
                         f"max diff {same:.1e}) |")
    # threads: throughput of 1 vs args.threads on the epsilon composite
    n_t = lrpfast.get_num_threads()

    def eps_on(threads):
        lrpfast.set_num_threads(threads)
        try:
            return net.relevance(x, classes, "epsilon")
        finally:
            lrpfast.set_num_threads(n_t)
    # best of --repeats (at least 2): at batch 1 a call takes 40-60 ms, and best of 2 read
    # anywhere from 1.39x to 1.74x on the same build
    (t1, _, _), (tn, _, _) = timed_pair(lambda: eps_on(1), lambda: eps_on(n_t),
                                        max(2, args.repeats))
    extra.append(f"| {label} b{batch}, uniform eps | 1 thread {batch / t1:.2f} img/s | "
                 f"{n_t} threads {batch / tn:.2f} img/s | {t1 / tn:.2f}x (target >= 1.7x) |")
    net = model = model64 = None   # free them before the next net
    gc.collect()


def bench_big(args, extra):
    import lrpfast

    proto, model_path = build_model("vgg16", args.out)
    net = lrpfast.Net(proto, model_path)
    x = np.random.default_rng(4).standard_normal((256, 3, 224, 224), np.float32)
    gc.collect()
    reset_peak()
    t = time.perf_counter()
    net.relevance(x, -1, "cmp_alpha2_flat")
    dt = time.perf_counter() - t
    pk = peak_rss()
    extra.append(f"| VGG-16 b256, cmp_alpha2_flat (chunked) | {dt:.1f} s, {256 / dt:.2f} img/s "
                 f"| peak RSS {pk / 1e9:.2f} GB | {'ok' if pk < 6e9 else 'NO'} (target < 6 GB) |")


def match_peer_isa() -> str:
    """Restricts the peer (PyTorch, and zennit on it) to AVX2 when lrpfast's AVX2 path is forced
    (LRPFAST_SIMD=avx2: how an AVX-512 machine stands in for an AVX2-only CPU), as such a CPU
    would: PyTorch's own kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions
    (ONEDNN_MAX_CPU_ISA) and MKL's BLAS (MKL_ENABLE_INSTRUCTIONS). Call it before torch is
    imported; variables already set are kept, and LRPFAST_PEER_ISA=native leaves the peer on
    the CPU's full instruction set. Returns what it did, for the bench's header."""
    if os.environ.get("LRPFAST_SIMD") != "avx2":
        return "peer on the CPU's own instruction set"
    if os.environ.get("LRPFAST_PEER_ISA") == "native":
        return "peer NOT restricted (LRPFAST_PEER_ISA=native): it may use AVX-512"
    for k, v in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                 ("MKL_ENABLE_INSTRUCTIONS", "AVX2")):
        os.environ.setdefault(k, v)
    return ("peer restricted to AVX2 as on an AVX2-only CPU (ATEN_CPU_CAPABILITY="
            f"{os.environ['ATEN_CPU_CAPABILITY']}, ONEDNN_MAX_CPU_ISA="
            f"{os.environ['ONEDNN_MAX_CPU_ISA']}, MKL_ENABLE_INSTRUCTIONS="
            f"{os.environ['MKL_ENABLE_INSTRUCTIONS']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nets", default="vgg16,caffenet")
    ap.add_argument("--big", action="store_true", help="also VGG-16 at batch 256 (slow)")
    ap.add_argument("--batch", type=int, default=None,
                    help="one batch size for every net (default: VGG-16 8, CaffeNet 16)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--conv-algo", default="auto", choices=["auto", "direct", "winograd", "taps"],
                    help="lrpfast's algorithm for 3x3 stride-1 convolutions (default auto: "
                         "Winograd F(2x2,3x3) for layers with >= 16 channels)")
    ap.add_argument("--linear-algo", default="auto", choices=["auto", "blas", "streamed"],
                    help="lrpfast's kernels for the fully connected products (default auto: "
                         "its streamed AVX-512 kernels where the CPU has AVX-512)")
    args = ap.parse_args(argv)

    peer_isa = match_peer_isa()
    import torch
    stub_torchvision()
    import zennit  # noqa: F401
    import lrpfast

    torch.set_num_threads(args.threads)
    lrpfast.set_num_threads(args.threads)
    from lrpfast._loader import _core
    _core.set_conv_algorithm(args.conv_algo)
    lrpfast.set_linear_algorithm(args.linear_algo)
    info = lrpfast.info()
    peak = gemm_peak()
    tpeak = torch_gemm_peak()
    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    print(f"lrpfast {info['version']}, BLAS {info['blas']}, {args.threads} threads, 3x3 conv "
          f"algorithm {_core.get_conv_algorithm()}, fully connected {info['linear_kernels']} "
          f"(prefetch {info.get('nt_prefetch', 0)}), "
          f"memory reuse {'on' if info['memory_reuse'] else 'off'}; torch "
          f"{torch.__version__}, zennit {zennit.__version__ if hasattr(zennit, '__version__') else ''}"
          f"; OPENBLAS_* env: {env or 'none'}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {peer_isa}")
    print(f"sgemm 2048^3 peak ({args.threads} threads): lrpfast's gemm {peak:.0f} GFLOP/s, "
          f"torch {tpeak:.0f} GFLOP/s\n")
    rows, extra = [], []
    sizes = {"vgg16": args.batch or 8, "caffenet": args.batch or 16}
    for kind in args.nets.split(","):
        bench_net(kind, sizes[kind], args, rows, extra)
    if args.big:
        bench_big(args, extra)

    print("| net | pass (lrpfast / zennit) | lrpfast s | torch/zennit s | lrpfast img/s | "
          "speed-up vs torch/zennit | x own forward | GFLOP/s (min FLOPs) | gemm peak alongside "
          "| % of gemm peak | % of start peak | peak RSS lrpfast / torch | agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for pre, what, tl, tz, n, fl, ml, mz, agree, tf, pk in rows:
        gf = fl / tl / 1e9
        print(f"| {pre} | {what} | {tl:.3f} | {tz:.3f} | {n / tl:.1f} | {tz / tl:.2f}x | "
              f"{tl / tf:.2f} | {gf:.0f} | {pk:.0f} | {100 * gf / pk:.0f}% | "
              f"{100 * gf / peak:.0f}% | {ml / 1e9:.2f} / {mz / 1e9:.2f} GB | {agree} |")
    print("\n| measurement | a | b | result |\n|---|---|---|---|")
    for e in extra:
        print(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
