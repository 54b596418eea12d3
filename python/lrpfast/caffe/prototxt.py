"""Text prototxt files and the plain-data net view (``NetDef``) built from them."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from google.protobuf import text_format

from . import schema as pb
from .errors import CaffeFormatError, check_regular_file

# Bytes that never occur in a text prototxt but always in a binary protobuf file.
_BINARY_BYTES = frozenset(range(9)) | frozenset(range(14, 32))


def parse_prototxt(text: str, *, path: str = "<string>",
                   allow_unknown_fields: bool = False) -> pb.NetParameter:
    """Parse prototxt text into a ``NetParameter`` message (no upgrade, no validation).

    ``path`` only names the source in error messages. With ``allow_unknown_fields`` fields
    outside lrpfast's schema subset are skipped instead of raising ``CaffeFormatError``.
    """
    net = pb.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=allow_unknown_fields)
    except text_format.ParseError as e:
        hint = ""
        if "has no field named" in str(e) and not allow_unknown_fields:
            hint = (" (lrpfast's Caffe schema covers BVLC Caffe and the SSD fork; pass "
                    "allow_unknown_fields=True to skip fields it does not know)")
        raise CaffeFormatError(path, f"expected a Caffe NetParameter in protobuf text "
                                     f"format: {e}{hint}") from None
    return net


def read_prototxt(path, *, allow_unknown_fields: bool = False) -> pb.NetParameter:
    """Read a text prototxt file and return its ``NetParameter`` message as written.

    Raises ``FileNotFoundError`` for a missing file and ``CaffeFormatError`` for a file that
    is binary (e.g. a caffemodel), not UTF-8, or not valid Caffe protobuf text.
    """
    path = check_regular_file(path)
    with open(path, "rb") as f:
        head = f.read(4096)
        # cheap sniff before reading a possibly huge binary file: control bytes mean binary;
        # text that merely is not UTF-8 (a Latin-1 comment) is reported as such below
        if any(b in _BINARY_BYTES for b in head):
            raise CaffeFormatError(path, "expected a text prototxt, found binary data "
                                         "(a .caffemodel or .binaryproto?)")
        data = head + f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CaffeFormatError(path, f"line {line}: byte 0x{data[e.start]:02x} is not UTF-8 "
                                     "text; expected a UTF-8 text prototxt") from None
    return parse_prototxt(text, path=path, allow_unknown_fields=allow_unknown_fields)


def write_prototxt(net, path) -> str:
    """Write ``net`` (a ``NetParameter`` or prototxt text) to ``path``; return the path.

    Text is checked to parse (``CaffeFormatError`` otherwise) and written unchanged.
    """
    path = os.fspath(path)
    if isinstance(net, str):
        parse_prototxt(net, path="<text for " + path + ">")
        text = net
    else:
        text = text_format.MessageToString(_as_net_parameter(net))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@dataclass
class LayerDef:
    """One layer of a ``NetDef``: ``param`` is its full ``LayerParameter`` message."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: pb.LayerParameter = field(repr=False)


@dataclass
class NetDef:
    """A net as plain data for one phase: inputs ``(name, shape)`` in order, then layers in
    Caffe's order (Input layers are in ``inputs``, not in ``layers``)."""

    name: str
    inputs: list[tuple[str, tuple[int, ...]]]
    layers: list[LayerDef]


def _as_net_parameter(msg) -> pb.NetParameter:
    if isinstance(msg, pb.NetParameter):
        return msg
    desc = getattr(msg, "DESCRIPTOR", None)
    if desc is not None and desc.full_name == "caffe.NetParameter":  # e.g. a real caffe_pb2
        return pb.NetParameter.FromString(msg.SerializeToString())
    raise TypeError(f"expected a caffe NetParameter message, got {type(msg).__name__}")


def upgrade_v1_layer(v1: pb.V1LayerParameter) -> pb.LayerParameter:
    """Convert a legacy ``V1LayerParameter`` (``layers { type: CONVOLUTION ... }``) to a
    ``LayerParameter`` as Caffe's ``UpgradeV1LayerParameter`` does (type enum -> string,
    ``*_param`` copied, blobs_lr / weight_decay / param names -> ``ParamSpec``)."""
    lp = pb.LayerParameter(name=v1.name, type=pb.V1_LAYER_TYPES.get(v1.type, ""),
                           bottom=v1.bottom, top=v1.top, loss_weight=v1.loss_weight)
    lp.include.extend(v1.include)
    lp.exclude.extend(v1.exclude)
    lp.blobs.extend(v1.blobs)
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param"):
            getattr(lp, fd.name).CopyFrom(value)
    n = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(n):
        spec = lp.param.add()
        if i < len(v1.param) and v1.param[i]:
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    return lp


def _rule_met(rule, phase: int, level: int, stages: set) -> bool:
    """Caffe's ``StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def _shape(dims, where, what) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if not shape or any(d <= 0 for d in shape):
        raise CaffeFormatError(where, f"{what} must have positive dimensions, got {shape}")
    return shape


def _net_inputs(net, where) -> list[tuple[str, tuple[int, ...]]]:
    names = list(net.input)
    if net.input_shape and net.input_dim:
        raise CaffeFormatError(where, "give either input_shape or the legacy input_dim, not both")
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise CaffeFormatError(where, f"{len(names)} input(s) {names} but "
                                          f"{len(net.input_shape)} input_shape(s); expected one each")
        dims = [s.dim for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise CaffeFormatError(where, f"{len(names)} input(s) {names} need 4 input_dim "
                                          f"values each, got {len(net.input_dim)}")
        dims = [net.input_dim[4 * i:4 * i + 4] for i in range(len(names))]
    elif names:
        raise CaffeFormatError(where, f"input(s) {names} have no shape: expected input_shape "
                                      "or input_dim")
    else:
        dims = []
    return [(n, _shape(d, where, f"input {n!r}")) for n, d in zip(names, dims)]


def read_net(source, *, phase: str | int = "TEST", level: int = 0,
             stages=()) -> NetDef:
    """Read a prototxt (path) or ``NetParameter`` message into a validated ``NetDef``.

    Legacy V1 ``layers`` are upgraded to ``LayerParameter``; layers whose include/exclude
    rules rule them out for ``phase`` (default TEST, i.e. deploy), ``level`` and ``stages``
    are dropped (Caffe's ``FilterNet``); inputs come from ``input`` + ``input_shape`` /
    ``input_dim`` and from ``Input`` layers, which are removed from ``layers``. Every other
    layer is kept as written, whatever its type. Raises ``CaffeFormatError`` (naming the
    layer) for unnamed or untyped layers, duplicate layer names, a bottom blob that no earlier
    layer or input produces, or a top produced twice other than in place.
    """
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        net = read_prototxt(where)
    else:
        net = _as_net_parameter(source)
        where = f"<NetParameter {net.name!r}>"
    phase_value = {"TRAIN": 0, "TEST": 1}.get(str(phase).upper(), phase)
    if phase_value not in (0, 1):
        raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
    stages = set(stages)
    if net.layer and net.layers:
        raise CaffeFormatError(where, "uses both 'layer' and the legacy V1 'layers' field; "
                                      "expected one of them")
    params = list(net.layer) if net.layer else [upgrade_v1_layer(v) for v in net.layers]

    inputs = _net_inputs(net, where)
    blobs = {name for name, _ in inputs}
    if len(blobs) != len(inputs):
        raise CaffeFormatError(where, f"duplicate net input names: {[n for n, _ in inputs]}")
    layers, names = [], set()
    for index, lp in enumerate(params):
        if lp.include and lp.exclude:
            raise CaffeFormatError(where, "has both include and exclude rules; Caffe allows "
                                          "only one kind", layer=lp.name or f"#{index}")
        if lp.include:
            if not any(_rule_met(r, phase_value, level, stages) for r in lp.include):
                continue
        elif any(_rule_met(r, phase_value, level, stages) for r in lp.exclude):
            continue
        if not lp.name:
            raise CaffeFormatError(where, f"layer #{index} (type {lp.type!r}) has no name")
        if not lp.type:
            raise CaffeFormatError(where, "has no type", layer=lp.name)
        if lp.name in names:
            raise CaffeFormatError(where, "duplicate layer name; expected unique names",
                                   layer=lp.name)
        names.add(lp.name)
        if any(not b for b in lp.bottom) or any(not t for t in lp.top):
            raise CaffeFormatError(where, "has an empty bottom or top name", layer=lp.name)
        for b in lp.bottom:
            if b not in blobs:
                raise CaffeFormatError(where, f"bottom blob {b!r} is not produced by an earlier "
                                              f"layer or net input", layer=lp.name)
        for j, t in enumerate(lp.top):
            in_place = j < len(lp.bottom) and lp.bottom[j] == t
            if t in blobs and not in_place:
                raise CaffeFormatError(where, f"top blob {t!r} is already produced by another "
                                              "layer (only in-place top == bottom may reuse it)",
                                       layer=lp.name)
            blobs.add(t)
        if lp.type == "Input":
            shapes = list(lp.input_param.shape)
            if lp.bottom or not lp.top:
                raise CaffeFormatError(where, "an Input layer needs tops and no bottoms",
                                       layer=lp.name)
            if len(shapes) == 1:
                shapes *= len(lp.top)
            if len(shapes) != len(lp.top):
                raise CaffeFormatError(where, f"Input layer has {len(lp.top)} top(s) but "
                                              f"{len(shapes)} input_param shape(s); expected "
                                              "one, or one per top", layer=lp.name)
            inputs += [(t, _shape(s.dim, where, f"input {t!r}")) for t, s in zip(lp.top, shapes)]
            continue
        layers.append(LayerDef(lp.name, lp.type, list(lp.bottom), list(lp.top), lp))
    if not layers:
        raise CaffeFormatError(where, f"has no layers in phase {'TEST' if phase_value else 'TRAIN'}")
    return NetDef(net.name, inputs, layers)
