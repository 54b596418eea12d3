"""Coverage-guided fuzzing of lrpfast's Caffe file readers with atheris (libFuzzer for Python).

Targets (one per run):

* ``prototxt``: ``caffe.read_net`` on the bytes as a text prototxt, then ``Net`` on the
  structure (shape inference and parameter checks, no weights);
* ``caffemodel``: ``caffe.read_caffemodel``, then ``Net`` with those weights on a fixed small
  prototxt (weight-shape and parameter checks) and one forward + relevance pass;
* ``binaryproto``: ``caffe.read_binaryproto``.

A clean outcome is a result or a ``ValueError`` (``CaffeFormatError``, ``LayerError``,
``NonFiniteError``, ``SampleMemoryError`` are ValueErrors or FloatingPointErrors, both
accepted); any other exception, a crash, a hang (``-timeout``) or memory beyond
``-rss_limit_mb`` is a finding and stops the run with a non-zero exit status.

Usage (atheris: ``pip install atheris``)::

    python tests/fuzz/fuzz_readers.py TARGET [libFuzzer options] [CORPUS_DIR...]
    python tests/fuzz/fuzz_readers.py caffemodel -runs=2000 tests/fuzz/corpus/caffemodel

``tests/fuzz/make_corpus.py`` rebuilds the seed corpus in ``tests/fuzz/corpus/TARGET``.
Give a scratch folder before the seed folder to keep what the run discovers without
touching the repository's seeds (libFuzzer adds new inputs to the first folder).
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris
import lrpfast
import numpy as np
from lrpfast import caffe


def _instrument_lrpfast() -> int:
    """Coverage instrumentation for every function and method of the loaded lrpfast modules
    (atheris.instrument_imports misses an editable install's import hook; instrument_all
    also walks numpy and protobuf and is slower). Returns how many were instrumented."""
    import inspect
    import types

    done = 0
    for name, module in list(sys.modules.items()):
        if not (name == "lrpfast" or name.startswith("lrpfast.")) or module is None:
            continue
        for obj in list(vars(module).values()):
            members = [obj]
            if inspect.isclass(obj) and obj.__module__ == name:
                members = [getattr(v, "__func__", getattr(v, "fget", v))
                           for v in vars(obj).values()]
            for f in members:
                if isinstance(f, types.FunctionType) and f.__module__ == name:
                    atheris.instrument_func(f)
                    done += 1
    return done


_instrument_lrpfast()

TARGETS = ("prototxt", "caffemodel", "binaryproto")
CLEAN = (ValueError, FloatingPointError)   # the readers' and the Net's documented errors

# The fixed net of the caffemodel target: every weighted layer type lrpfast reads.
NET = """
input: "data"
input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 4 } }
"""
_X = np.linspace(-1.0, 1.0, 72, dtype=np.float32).reshape(1, 2, 6, 6)


def _path() -> str:
    fd, path = tempfile.mkstemp(prefix="lrpfast_fuzz_")
    os.close(fd)
    return path


_PATH = _path()


def one_input(target: str, data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        if target == "prototxt":
            lrpfast.Net(caffe.read_net(_PATH), None)
        elif target == "caffemodel":
            weights = caffe.read_caffemodel(_PATH)
            net = lrpfast.Net.from_text(NET, weights, memory_limit=1 << 20)
            net.relevance(_X, -1, rules="epsilon")
        else:
            caffe.read_binaryproto(_PATH)
    except CLEAN:
        pass


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus...]")
    target = argv[1]
    atheris.Setup([argv[0]] + argv[2:], lambda data: one_input(target, data))
    try:
        atheris.Fuzz()
    finally:
        os.unlink(_PATH)


if __name__ == "__main__":
    main(sys.argv)
