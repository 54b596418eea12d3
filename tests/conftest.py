"""Shared fixtures: where the real model files are, and random weights for a net's structure.

The deploy prototxts of CaffeNet, AlexNet, GoogLeNet and the res10 SSD face detector ship in
``tests/data/models`` (see its README.md). Trained weights are not shipped: the res10 tests need
``res10_300x300_ssd_iter_140000.caffemodel`` in ``tests/data/models/res10_ssd_face/``, or a
folder named by the environment variable ``LRPFAST_MODELS`` with the same layout (searched
first); without it they skip and say what is missing.
"""
from __future__ import annotations

import contextlib

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

SHIPPED_MODELS = Path(__file__).resolve().parent / "data" / "models"


def find_model_file(relpath: str) -> Path | None:
    """``relpath`` (e.g. ``"res10_ssd_face/deploy.prototxt"``) under ``$LRPFAST_MODELS`` if
    that has it, else under ``tests/data/models``; None when neither has it."""
    roots = [Path(os.environ["LRPFAST_MODELS"])] if os.environ.get("LRPFAST_MODELS") else []
    for root in roots + [SHIPPED_MODELS]:
        if (root / relpath).is_file():
            return root / relpath
    return None


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The folder searched first: ``$LRPFAST_MODELS`` if set, else ``tests/data/models``
    (prefer ``model_file``, which also falls back and skips cleanly)."""
    return Path(os.environ.get("LRPFAST_MODELS") or SHIPPED_MODELS)


@pytest.fixture(scope="session")
def model_file():
    """``model_file(relpath)``: the path of a model file (see :func:`find_model_file`);
    skips the test, naming the file and where to put it, when it is missing."""
    def get(relpath: str) -> Path:
        path = find_model_file(relpath)
        if path is None:
            pytest.skip(f"model file {relpath} not found: put it under {SHIPPED_MODELS} or "
                        f"under $LRPFAST_MODELS (see tests/data/models/README.md)")
        return path
    return get


@contextlib.contextmanager
def deterministic_as(on: bool):
    """lrpfast's deterministic mode set to ``on`` inside the block, the previous setting after."""
    import lrpfast

    before = lrpfast.get_deterministic()
    lrpfast.set_deterministic(on)
    try:
        yield
    finally:
        lrpfast.set_deterministic(before)


@pytest.fixture
def deterministic():
    """Runs the test in lrpfast's deterministic mode (bit-identical results for an image
    whatever its batch and the thread count), restoring the previous setting after it."""
    import lrpfast

    before = lrpfast.get_deterministic()
    lrpfast.set_deterministic(True)
    yield
    lrpfast.set_deterministic(before)


def simd_paths() -> list:
    """The SIMD settings that select a distinct kernel path on this CPU ("native" first)."""
    from lrpfast import _core

    before = _core.get_simd()
    paths, seen = [], set()
    try:
        for name in ("native", "avx2", "generic"):
            _core.set_simd(name)
            if _core.simd_kernels() not in seen:
                seen.add(_core.simd_kernels())
                paths.append(name)
    finally:
        _core.set_simd(before)
    return paths


@pytest.fixture(params=simd_paths())
def simd(request):
    """Runs the test on each SIMD path this CPU has (AVX-512, AVX2 + FMA, generic C++)."""
    from lrpfast import _core

    before = _core.get_simd()
    _core.set_simd(request.param)
    yield _core.simd_kernels()
    _core.set_simd(before)


def seeded_rng(*key) -> np.random.Generator:
    """A generator seeded from a readable key, so every test has its own fixed stream."""
    return np.random.default_rng(zlib.crc32("|".join(map(str, key)).encode()))


def he_weights(net, rng: np.random.Generator, bias_std: float = 0.0) -> dict:
    """{layer name: [float32 blobs]} for every layer of ``net`` (a structure-only
    ``lrpfast.Net``) that has weights, in Caffe blob order and shape.

    Convolution / InnerProduct: W ~ N(0, 2 / fan_in) (He et al. 2015: keeps the activation
    scale roughly constant through ReLU layers, so logits of deep nets neither vanish nor
    overflow), bias ~ N(0, bias_std) (exactly 0 for bias_std = 0: a bias-free variant).
    BatchNorm: mean/var statistics stored times a moving-average factor of 2; Scale: gamma
    around 1 and beta ~ N(0, 0.1) (if it has one). The shapes come from the prototxt
    parameters and the input shapes lrpfast inferred (not from the engine's weight checks).
    """
    out = {}
    for layer in net.layers:
        p = layer.param
        in_shape = net.shapes[layer.bottoms[0]]
        if layer.type == "Convolution":
            cp = p.convolution_param
            if cp.HasField("kernel_h"):
                kh, kw = cp.kernel_h, cp.kernel_w
            else:
                kh, kw = cp.kernel_size[0], cp.kernel_size[-1]
            shape = (cp.num_output, in_shape[0] // cp.group, kh, kw)
            has_bias = cp.bias_term
        elif layer.type == "InnerProduct":
            ip = p.inner_product_param
            shape = (ip.num_output, int(np.prod(in_shape)))
            has_bias = ip.bias_term
        elif layer.type == "BatchNorm":
            C, f = in_shape[0], 2.0
            out[layer.name] = [(rng.normal(0, 0.5, C) * f).astype(np.float32),
                               (rng.uniform(0.5, 2.0, C) * f).astype(np.float32),
                               np.array([f], np.float32)]
            continue
        elif layer.type == "Scale":
            C = in_shape[0]
            blobs = [rng.uniform(0.5, 1.5, C).astype(np.float32)]
            if p.scale_param.bias_term:
                blobs.append(rng.normal(0, 0.1, C).astype(np.float32))
            out[layer.name] = blobs
            continue
        else:
            continue
        fan_in = int(np.prod(shape[1:]))
        blobs = [rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)]
        if has_bias:
            blobs.append((rng.normal(0.0, bias_std, shape[0]) if bias_std > 0
                          else np.zeros(shape[0])).astype(np.float32))
        out[layer.name] = blobs
    return out


@pytest.fixture(scope="session")
def res10_astronaut(models_dir):
    """(model folder, res10 SSD face detector as lrpfast.Net, lrpfast.preprocess of
    scikit-image's astronaut resized to 300 x 300 minus the model's BGR mean); skips without
    the model files or scikit-image."""
    import lrpfast
    d = models_dir / "res10_ssd_face"
    model = d / "res10_300x300_ssd_iter_140000.caffemodel"
    if not model.exists():
        pytest.skip(f"{model} not found")
    skd = pytest.importorskip("skimage.data")
    net = lrpfast.Net(d / "deploy.prototxt", model, skip_unsupported=True)
    return d, net, lrpfast.preprocess(skd.astronaut(), 300, mode="resize",
                                      mean=(104.0, 177.0, 123.0))
