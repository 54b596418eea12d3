"""ONNX models in: an ONNX graph becomes lrpfast's layer graph (the same layer types as a Caffe
net), so ``lrpfast.Net("model.onnx")`` has the whole Net API.

Needs the ``onnx`` package (``pip install "lrpfast[onnx]"``) to parse the file; the engine does
not use it after loading. ``is_onnx`` and ``read_onnx`` are what ``Net`` calls;
``export_torch`` serves ``Net.from_torch``. The operator table and the rule each operator gets
are in :mod:`lrpfast.onnx.importer`.
"""
from __future__ import annotations

import os

INSTALL_HINT = 'ONNX support needs the onnx package: pip install "lrpfast[onnx]"'


def is_onnx(src) -> bool:
    """True for what Net should read as ONNX: a path ending in .onnx, serialized bytes, or an
    ``onnx.ModelProto`` (checked by class name, so that onnx is not imported here)."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src).lower().endswith(".onnx")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return True
    return type(src).__name__ == "ModelProto"


def load(src):
    """An ``onnx.ModelProto`` from a path, serialized bytes or a ModelProto; ImportError saying
    what to install when onnx is missing, ValueError naming the file when it does not parse."""
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
    kw = dict(do_constant_folding=True, input_names=["input"], output_names=["output"])
    if opset is not None:
        kw["opset_version"] = int(opset)
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter's
            try:   # the TorchScript exporter: no onnxscript needed
                torch.onnx.export(module, (example_input,), buf, dynamo=False, **kw)
            except TypeError:   # a torch without the dynamo switch
                torch.onnx.export(module, (example_input,), buf, **kw)
    finally:
        module.train(was_training)
    return buf.getvalue()


def source_name(src) -> str:
    """The path of an ONNX source, or '<onnx model>' for bytes / a ModelProto."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return "<onnx model>"


__all__ = ["INSTALL_HINT", "export_torch", "finish", "is_onnx", "load", "read_onnx",
           "source_name"]
