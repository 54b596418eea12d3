"""ONNX models in: an ONNX graph becomes lrpfast's layer graph (the same layer types as a Caffe
net), so ``lrpfast.Net("model.onnx")`` has the whole Net API.

Needs the ``onnx`` package (``pip install "lrpfast[onnx]"``) to parse the file; the engine does
not use it after loading. ``is_onnx`` and ``read_onnx`` are what ``Net`` calls;
``export_torch`` serves ``Net.from_torch``. The operator table and the rule each operator gets
are in :mod:`lrpfast.onnx.importer`.
"""
from __future__ import annotations

import os
from typing import Any

INSTALL_HINT = 'ONNX support needs the onnx package: pip install "lrpfast[onnx]"'


class Named:
    """An ONNX source (path, bytes or ModelProto) with the name its errors should give, e.g. a
    ModelProto that ``Net.from_onnx`` read from a file keeps naming that file."""

    __slots__ = ("model", "name")

    def __init__(self, model, name: str):
        self.model, self.name = model, name


def is_onnx(src) -> bool:
    """True for what Net should read as ONNX: a path ending in .onnx, serialized bytes, or an
    ``onnx.ModelProto`` (checked by class name, so that onnx is not imported here)."""
    if isinstance(src, Named):
        return True
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src).lower().endswith(".onnx")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return True
    return type(src).__name__ == "ModelProto"


def load(src):
    """An ``onnx.ModelProto`` from a path, serialized bytes or a ModelProto; ImportError saying
    what to install when onnx is missing, ValueError naming the file when it does not parse."""
    if isinstance(src, Named):
        return load(src.model)
    try:
        import onnx
    except ImportError:
        raise ImportError(f"{source_name(src)}: {INSTALL_HINT}") from None
    if type(src).__name__ == "ModelProto":
        return src
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            return onnx.load_from_string(bytes(src))
        return onnx.load(os.fspath(src))
    except OSError:
        raise
    except Exception as e:   # protobuf's DecodeError and friends
        raise ValueError(f"{source_name(src)}: not a readable ONNX model ({e})") from None


def with_input_shape(model, input_shape, source: str = "<onnx model>"):
    """A copy of ``model`` whose graph input has the per-sample shape ``input_shape`` (e.g.
    (3, 48, 192) for an input (N, 3, H, W) with dynamic H and W); the batch axis stays free.
    ``input_shape``: a tuple for a one-input graph, or {input name: tuple}. A dimension the
    model fixes must be given with the same value (ValueError naming the input otherwise)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if not isinstance(input_shape, dict):
        if len(inputs) != 1:
            raise ValueError(f"{source}: the graph has inputs {[vi.name for vi in inputs]}; "
                             f"give input_shape as {{name: shape}}")
        input_shape = {inputs[0].name: input_shape}
    unknown = set(input_shape) - {vi.name for vi in inputs}
    if unknown:
        raise ValueError(f"{source}: input_shape names {sorted(unknown)}, not inputs of the "
                         f"graph (its inputs: {[vi.name for vi in inputs]})")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name not in input_shape:
            continue
        shape = [int(d) for d in input_shape[vi.name]]
        dims = vi.type.tensor_type.shape.dim
        if len(shape) != len(dims) - 1 or any(d <= 0 for d in shape):
            raise ValueError(f"{source}: input '{vi.name}' has rank {len(dims)}: input_shape "
                             f"must give its {len(dims) - 1} positive dimensions after the "
                             f"batch axis, got {tuple(shape)}")
        for i, (d, v) in enumerate(zip(list(dims)[1:], shape), 1):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v:
                raise ValueError(f"{source}: input '{vi.name}' fixes dimension {i} to "
                                 f"{d.dim_value}; input_shape gives {v}")
            d.Clear()
            d.dim_value = v
    return m


def read_onnx(src, weights=None):
    """(NetDef, {layer name: [float32 arrays]}) for ``Net`` from an ONNX model (see ``load``)."""
    if weights is not None:
        raise ValueError(f"{source_name(src)}: an ONNX model carries its own weights; pass weights=None")
    from .importer import convert

    return convert(load(src), source_name(src))


def finish(net) -> None:
    """Post-build step of an ONNX net (see importer.mark_input_normalisation)."""
    from .importer import mark_input_normalisation

    mark_input_normalisation(net)


def export_torch(module, example_input, opset: int | None = None) -> bytes:
    """Export a torch.nn.Module to ONNX bytes in memory with ``torch.onnx.export`` (eval mode,
    constants folded); lrpfast never imports torch elsewhere."""
    try:
        import torch
    except ImportError:
        raise ImportError("Net.from_torch needs PyTorch (pip install torch)") from None
    import io

    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    kw: dict[str, Any] = dict(do_constant_folding=True, input_names=["input"],
                              output_names=["output"])
    if opset is not None:
        kw["opset_version"] = int(opset)
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter's
            try:   # the TorchScript exporter: no onnxscript needed
                torch.onnx.export(module, (example_input,), buf,  # type: ignore[arg-type]
                                  dynamo=False, **kw)
            except TypeError:   # a torch without the dynamo switch
                torch.onnx.export(module, (example_input,), buf, **kw)  # type: ignore[arg-type]
    finally:
        module.train(was_training)
    return buf.getvalue()


def source_name(src) -> str:
    """The path of an ONNX source, or '<onnx model>' for bytes / a ModelProto."""
    if isinstance(src, Named):
        return src.name
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return "<onnx model>"


__all__ = ["INSTALL_HINT", "Named", "export_torch", "finish", "is_onnx", "load", "read_onnx",
           "source_name", "with_input_shape"]
