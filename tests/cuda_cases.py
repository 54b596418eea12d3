"""The device-vs-CPU comparisons shared by tests/test_cuda_emulated.py (host emulation of
lrpfast._cuda, every run) and tests/test_cuda_gpu.py (the real module on a GPU): the rule x layer
grid of tests/test_rules_grid.py and a few whole networks, each run by Net(device="cpu") and
Net(device="cuda") and compared with the normalised MSE."""
from __future__ import annotations

import numpy as np

import nets
import test_rules_grid as grid
import lrpfast
from lrpfast import cuda

# GPU and CPU differ only in float32 summation order (cuBLAS vs OpenBLAS blocking, gather vs
# scatter, float32 Normalize/Softmax sums): normalised MSE well below this (the backend
# tolerance). The emulation runs the CPU kernels, so it is exact in practice.
NMSE_TOL = 1e-6
# eps = 1e-3 on mixed-sign contributions amplifies summation-order differences near z_j = 0
# (see test_rules_grid.EPS_TOL: relative errors up to ~1e-3, i.e. NMSE up to ~1e-6 .. 1e-5)
NMSE_TOL_SMALL_EPS = 1e-5


def nmse(got, ref) -> float:
    got = got.to_host() if isinstance(got, cuda.DeviceArray) else got
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    den = float(np.mean(ref * ref)) or 1.0
    return float(np.mean((got - ref) ** 2)) / den


def tol(rule_id) -> float:
    return NMSE_TOL_SMALL_EPS if rule_id == "eps1e-3" else NMSE_TOL


GRID = [(r, c, n) for r in grid.RULES for c in grid.CASES for n in grid.BATCHES
        if grid._applies(r, c)]


def grid_case(rule_id, case_id, N):
    """(device result, CPU result) of one rule x layer grid point (test_rules_grid.run_case)."""
    layers, chw, top, opts = grid.CASES[case_id]()
    mode = grid.RULES[rule_id][2]
    rng = grid.seeded("cuda", rule_id, case_id, N)
    shape = (N,) + chw
    tn = nets.build(layers, shape, rng, positive=(mode == "positive"),
                    input_layer=opts.get("input_layer", False))
    if mode == "box":
        lo, hi = grid._zbox_bounds(chw[0])
        x = nets.random_input(shape, rng, low=lo, high=hi)
    else:
        x = nets.random_input(shape, rng, positive=(mode == "positive"))
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    top_shape = (N,) + cpu.shapes[cpu.top_layer(top).tops[0]]
    R_top = rng.normal(size=top_shape).astype(np.float32)
    rules, _, _ = grid._engine_and_ref_rules(rule_id, layers, chw[0], opts)
    want = cpu.propagate(x, R_top, top=top, rules=rules)
    got = dev.propagate(x, R_top, top=top, rules=rules)
    return got, want


# whole networks: prototxt text of layers tests/nets.py has no builder for
PERMUTE_NORMALIZE = """name: "ssdlike"
input: "data"
input_shape { dim: %(N)d dim: 3 dim: 8 dim: 7 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "norm" type: "Normalize" bottom: "c1" top: "norm"
  norm_param { across_spatial: %(across)s channel_shared: false } }
layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "perm" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def ssdlike(N, across, rng):
    text = PERMUTE_NORMALIZE % {"N": N, "across": "true" if across else "false"}
    w = {"c1": [rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32),
                rng.normal(0, 0.1, 5).astype(np.float32)],
         "norm": [rng.uniform(0.5, 2.0, 5).astype(np.float32)],
         "fc": [rng.normal(0, 0.2, (6, 5 * 8 * 7)).astype(np.float32),
                rng.normal(0, 0.1, 6).astype(np.float32)]}
    return text, w


def check_ssdlike(across, rng, rules_list=("epsilon",)):
    """The ssd-like net (Permute, Normalize, Softmax) on both devices: its forward blobs and the
    relevance under each of ``rules_list`` agree within NMSE_TOL."""
    text, w = ssdlike(2, across, rng)
    x = nets.random_input((2, 3, 8, 7), rng)
    cpu = lrpfast.Net.from_text(text, w)
    dev = lrpfast.Net.from_text(text, w, device="cuda")
    names = ["norm", "perm", "prob"]
    want, got = cpu.forward(x, blobs=names), dev.forward(x, blobs=names)
    for k in names:
        assert nmse(got[k], want[k]) <= NMSE_TOL, k
    for rules in rules_list:
        assert nmse(dev.relevance(x, -1, rules), cpu.relevance(x, -1, rules)) <= NMSE_TOL, rules


def vgg_like(N, rng):
    """A small CaffeNet/VGG/ResNet/GoogLeNet-like stack: every layer type with relevance."""
    layers = [nets.conv("c1", "data", 6, kernel=3, pad=1), nets.relu("r1", "c1"),
              nets.lrn("n1", "c1"), nets.pool("p1", "n1", "MAX", 2, 2),
              nets.conv("c2a", "p1", 4, kernel=1), nets.relu("r2a", "c2a"),
              nets.conv("c2b", "p1", 4, kernel=3, pad=1, group=2), nets.relu("r2b", "c2b"),
              nets.concat("cat", ["c2a", "c2b"]),
              nets.conv("c3", "cat", 8, kernel=3, pad=1, bias=False),
              nets.batchnorm("bn3", "c3"), nets.scale("sc3", "c3", bias=True),
              nets.eltwise("res", ["cat", "c3"], "SUM", coeff=[1.0, 0.5]),
              nets.relu("r3", "res", negative_slope=0.05),
              nets.pool("p3", "res", "AVE", 3, 2, 1), nets.dropout("d3", "p3"),
              nets.flatten("fl", "p3"), nets.ip("fc", "fl", 7), nets.softmax("prob", "fc")]
    tn = nets.build(layers, (N, 3, 12, 12), rng)
    return tn


# ---- exact FP32 (no TF32, no reduced-precision emulation): shared by the GPU and host tests
def exact_fp32_products(m) -> dict:
    """{path: bool} for a product with an identity whose result must be x exactly: x = 1 + 2^-12
    needs 13 significant bits, TF32 keeps 11 (10 stored), so TF32 rounds it to 1 and any
    reduced-precision mode shows. Paths: linear (one SGEMM), a 1x1 convolution (batched GEMM on
    the input itself), a 3x3 convolution (im2col, then batched GEMM). ``m``: the _cuda module."""
    v = np.float32(1 + 2.0 ** -12)
    n = 64
    a = np.full((3, n), v, np.float32)
    eye = np.eye(n, dtype=np.float32)
    out = {"linear": np.array_equal(m.linear_forward(m.from_host(a), m.from_host(eye), None)
                                    .to_host(), a)}
    x = np.full((2, n, 5, 4), v, np.float32)
    y = m.conv_forward(m.from_host(x), m.from_host(eye.reshape(n, n, 1, 1)), None, 1, 0, 1, 1)
    out["conv 1x1"] = np.array_equal(y.to_host(), x)
    w3 = np.zeros((n, n, 3, 3), np.float32)
    w3[np.arange(n), np.arange(n), 1, 1] = 1
    y = m.conv_forward(m.from_host(x), m.from_host(w3), None, 1, 1, 1, 1)
    out["conv 3x3"] = np.array_equal(y.to_host(), x)
    return out
