"""Binary weights: caffemodel and binaryproto, read and written at the protobuf wire level.

Reading never parses the whole file with protobuf (that would build Python lists of every
weight). A small walker reads only the message structure NetParameter -> layer (100) /
layers (2) -> name, type, blobs -> BlobProto, seeking over everything else, and reads each
blob's float data straight from the file into its final numpy array (``readinto``): one pass
over the bytes, one copy, peak memory about the size of the weights. Every length is checked
against its enclosing message, so truncated, garbage or hostile files raise
``CaffeFormatError`` and never allocate more than the file holds.

Writing streams: each blob's bytes go from the array's buffer to the file; only the small
headers are built in Python.
"""
from __future__ import annotations

import os
from math import prod

import numpy as np

from . import schema as pb
from .errors import CaffeFormatError, check_regular_file

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}
_MAX_FIELD = (1 << 29) - 1
# Blobs one layer may hold. Caffe's layers have at most a handful (BatchNorm: 3); the cap keeps
# a small hostile file (a million 2-byte empty blob entries) from costing a Python array each.
MAX_BLOBS_PER_LAYER = 64


class _Source:
    """Bounds-checked random access to a binary file."""

    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, pos: int, n: int) -> bytes:
        self.f.seek(pos)
        data = self.f.read(n)
        if len(data) != n:
            raise CaffeFormatError(self.path, f"file shrank while reading (byte {pos})")
        return data

    def readinto(self, pos: int, array: np.ndarray) -> None:
        self.f.seek(pos)
        view = memoryview(array).cast("B")
        if self.f.readinto(view) != view.nbytes:
            raise CaffeFormatError(self.path, f"file shrank while reading (byte {pos})")


def _varint(buf, i: int) -> tuple[int, int]:
    """Decode the varint at ``buf[i:]``; return (value, next index) or raise IndexError /
    ValueError for a cut-off or over-long one."""
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _Fields:
    """Iterator over the fields of one message stored at ``[start, end)`` of ``src``.

    Yields ``(number, wire_type, value)``: the integer for varints, the payload offset for
    fixed32/fixed64, and ``(offset, length)`` for length-delimited fields. ``field_start`` is
    the offset of the current field's tag; a consumer may move ``pos`` forward past fields it
    consumed itself. ``expect`` maps field numbers to their allowed wire types.
    """

    def __init__(self, src: _Source, start: int, end: int, what: str, layer=None, expect=None):
        self.src, self.pos, self.end = src, start, end
        self.what, self.layer, self.expect = what, layer, expect or {}
        self.field_start = start

    def error(self, problem: str, pos: int | None = None):
        at = self.field_start if pos is None else pos
        return CaffeFormatError(self.src.path, f"{self.what}: {problem} (at byte {at})",
                                layer=self.layer)

    def __iter__(self):
        return self

    def __next__(self):
        start = self.field_start = self.pos
        if start >= self.end:
            raise StopIteration
        head = self.src.read(start, min(20, self.end - start))
        try:
            tag, i = _varint(head, 0)
            number, wire = tag >> 3, tag & 7
            if wire == _LEN:
                length, i = _varint(head, i)
            elif wire == _VARINT:
                value, i = _varint(head, i)
        except IndexError:
            raise self.error("message ends inside a field header (truncated file?)") from None
        except ValueError as e:
            raise self.error(str(e)) from None
        if not 0 < number <= _MAX_FIELD or tag >> 32:
            raise self.error(f"invalid field number {number} (not a protobuf message, or "
                             "a corrupt one)")
        allowed = self.expect.get(number)
        if wire not in _WIRE_NAMES or (allowed is not None and wire not in allowed):
            want = " or ".join(_WIRE_NAMES[w] for w in allowed) if allowed else "a valid wire type"
            raise self.error(f"field {number} has wire type {wire}, expected {want} "
                             "(wrong file kind, or corrupt data)")
        p = start + i
        if wire == _VARINT:
            self.pos = p
            return number, wire, value
        if wire == _LEN:
            if length > self.end - p:
                raise self.error(f"field {number} claims {length} bytes but only "
                                 f"{self.end - p} remain (truncated file?)")
            self.pos = p + length
            return number, wire, (p, length)
        size = 8 if wire == _I64 else 4
        if size > self.end - p:
            raise self.error(f"field {number} is cut off (truncated file?)")
        self.pos = p + size
        return number, wire, p


def _read_unpacked(fields: _Fields, offset: int, size: int, dtype: str) -> np.ndarray:
    """Values of a non-packed repeated float/double field starting at the current field:
    consecutive single-byte-tag records are decoded vectorised, in growing windows (so the
    cost stays linear in the run length), and ``fields.pos`` moves past them."""
    tag_pos = fields.field_start
    if offset - tag_pos != 1:  # unusual multi-byte tag: take just this one value
        return np.frombuffer(fields.src.read(offset, size), dtype)
    tag, rec = fields.src.read(tag_pos, 1)[0], 1 + size
    parts, pos, window = [], tag_pos, 64
    while fields.end - pos >= rec:
        n = min(window, (fields.end - pos) // rec)
        chunk = np.frombuffer(fields.src.read(pos, n * rec), np.uint8).reshape(n, rec)
        bad = np.flatnonzero(chunk[:, 0] != tag)
        k = int(bad[0]) if bad.size else n
        parts.append(chunk[:k, 1:].copy().view(dtype).ravel())
        pos += k * rec
        if k < n:
            break
        window *= 2
    fields.pos = pos
    return np.concatenate(parts)


_BLOB_WIRES = {1: (_VARINT,), 2: (_VARINT,), 3: (_VARINT,), 4: (_VARINT,), 5: (_LEN, _I32),
               6: (_LEN, _I32), 7: (_LEN,), 8: (_LEN, _I64), 9: (_LEN, _I64)}


def _read_dims(src: _Source, start: int, length: int, what: str, layer) -> list[int]:
    """The ``dim`` values of a BlobShape message (packed or not)."""
    dims = []
    for number, wire, value in _Fields(src, start, start + length, what + " shape", layer,
                                       {1: (_VARINT, _LEN)}):
        if number != 1:
            continue
        if wire == _VARINT:
            dims.append(_signed(value))
            continue
        buf, i = src.read(*value), 0
        try:
            while i < len(buf):
                v, i = _varint(buf, i)
                dims.append(_signed(v))
        except (IndexError, ValueError):
            raise CaffeFormatError(src.path, f"{what}: corrupt shape dims (at byte {value[0]})",
                                   layer=layer) from None
    return dims


# What an empty BlobProto (no data, no shape) decodes to: one shared read-only array, so that
# a file of 2-byte empty blob entries costs a list slot per entry, not an array each.
_EMPTY_BLOB = np.empty(0, np.float32)
_EMPTY_BLOB.flags.writeable = False


def _read_blob(src: _Source, start: int, length: int, what: str, layer=None,
               require_content: bool = False) -> np.ndarray:
    """Decode one BlobProto into a float32 array of its shape (see ``read_caffemodel``).
    With ``require_content`` a message without data, shape or legacy dims is an error."""
    if length == 0 and not require_content:
        return _EMPTY_BLOB
    fields = _Fields(src, start, start + length, what, layer, _BLOB_WIRES)
    legacy, dims = {}, None
    segments = {5: [], 8: []}  # float data / double data: (offset, count) or ndarray
    for number, wire, value in fields:
        if number <= 4:
            legacy[number] = _signed(value)
        elif number == 7:
            dims = (dims or []) + _read_dims(src, *value, what, layer)
        elif number in segments:
            size = 4 if number == 5 else 8
            if wire == _LEN:
                offset, nbytes = value
                if nbytes % size:
                    raise fields.error(f"packed {'float' if size == 4 else 'double'} data of "
                                       f"{nbytes} bytes is not a multiple of {size}")
                segments[number].append((offset, nbytes // size))
            else:
                segments[number].append(_read_unpacked(fields, value, size, f"<f{size}"))
    if require_content and not (legacy or dims is not None or segments[5] or segments[8]):
        raise CaffeFormatError(src.path, "no blob data or shape: expected a binary BlobProto")
    number = 8 if segments[8] else 5  # Caffe prefers double_data when present
    parts = segments[number]
    count = sum(len(p) if isinstance(p, np.ndarray) else p[1] for p in parts)
    if legacy:
        shape = tuple(legacy.get(k, 0) for k in (1, 2, 3, 4))
    elif dims is not None:
        shape = tuple(dims)
    else:
        shape = (count,)
    if any(d < 0 for d in shape):
        raise CaffeFormatError(src.path, f"{what}: negative dimension in shape {shape}",
                               layer=layer)
    if prod(shape) != count:
        raise CaffeFormatError(src.path, f"{what} has {count} values but its shape {shape} "
                                         f"needs {prod(shape)}", layer=layer)
    out = np.empty(count, "<f4" if number == 5 else "<f8")
    i = 0
    for p in parts:
        if isinstance(p, np.ndarray):
            out[i:i + len(p)] = p
            i += len(p)
        else:
            src.readinto(p[0], out[i:i + p[1]])
            i += p[1]
    with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 -> inf, as Caffe
        return out.astype(np.float32, copy=False).reshape(shape)


_NET_WIRES = {1: (_LEN,), 2: (_LEN,), 3: (_LEN,), 4: (_VARINT, _LEN), 5: (_VARINT,),
              6: (_LEN,), 7: (_VARINT,), 8: (_LEN,), 100: (_LEN,)}
_LAYER_WIRES = {1: (_LEN,), 2: (_LEN,), 3: (_LEN,), 4: (_LEN,), 7: (_LEN,)}
_V1_WIRES = {2: (_LEN,), 3: (_LEN,), 4: (_LEN,), 5: (_VARINT,), 6: (_LEN,)}


def _read_layer(src: _Source, start: int, length: int, index: int, v1: bool, wanted=None):
    """Return (name, type, blobs) of one LayerParameter (or V1LayerParameter); blobs is None
    for a layer whose name is not in ``wanted`` (None: every layer), its blobs not decoded."""
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    what = f"{'V1 layers' if v1 else 'layer'} #{index}"
    fields = _Fields(src, start, start + length, what, None, _V1_WIRES if v1 else _LAYER_WIRES)
    name, ltype, spans = None, "", []
    for number, _, value in fields:
        if number == name_f:
            try:
                name = src.read(*value).decode("utf-8")
            except UnicodeDecodeError:
                raise fields.error("layer name is not UTF-8 text") from None
        elif number == type_f:
            if v1:
                ltype = pb.V1_LAYER_TYPES.get(value, f"V1 type {value}")
            else:
                try:
                    ltype = src.read(*value).decode("utf-8")
                except UnicodeDecodeError:
                    raise fields.error("layer type is not UTF-8 text") from None
        elif number == blobs_f:
            if len(spans) == MAX_BLOBS_PER_LAYER:
                raise fields.error(f"more than {MAX_BLOBS_PER_LAYER} blobs in one layer "
                                   "(corrupt or hostile file?)")
            spans.append(value)
    if not name:
        raise CaffeFormatError(src.path, f"{what} has no name; expected every layer to be named")
    if wanted is not None and name not in wanted:
        return name, ltype, None
    blobs = [_read_blob(src, s, n, f"blob {i}", name) for i, (s, n) in enumerate(spans)]
    return name, ltype, blobs


def _open(path):
    path = check_regular_file(path)
    f = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 - callers close it
    return f, _Source(f, path, os.fstat(f.fileno()).st_size)


def read_caffemodel(path, *, with_types: bool = False, layers=None) -> dict:
    """Read a binary caffemodel's weights: ``{layer name: [blob arrays]}`` in file order.

    Each blob is a new, writable, C-contiguous float32 array with the blob's shape: from
    ``shape.dim``, or ``(num, channels, height, width)`` when the legacy fields are present
    (as Caffe's ``Blob::FromProto``); ``double_data`` is converted to float32. Layers without
    blobs map to ``[]``; an empty BlobProto (no data, no shape) gives one shared read-only
    empty array. Both ``layer`` (V2) and legacy V1 ``layers`` are read. With
    ``with_types=True`` returns ``(weights, {layer name: type string})`` instead. ``layers``:
    a collection of layer names; only those layers' blobs are decoded and returned (the others
    are checked for structure and skipped), so a file of many unneeded layers costs a scan.
    A layer may hold at most ``MAX_BLOBS_PER_LAYER`` blobs.
    Raises ``FileNotFoundError`` for a missing file and ``CaffeFormatError`` (naming the file
    and layer) for anything that is not a well-formed caffemodel.
    """
    f, src = _open(path)
    weights, types = {}, {}
    with f:
        count = 0
        for number, _, value in _Fields(src, 0, src.size, "NetParameter", None, _NET_WIRES):
            if number not in (100, 2):
                continue
            name, ltype, blobs = _read_layer(src, *value, count, v1=number == 2, wanted=layers)
            count += 1
            if blobs is None:
                continue
            if name in weights:
                if blobs and weights[name]:
                    raise CaffeFormatError(src.path, "appears twice with weights; expected "
                                                     "unique layer names", layer=name)
                if not blobs:
                    continue
            weights[name], types[name] = blobs, ltype
    if not count:
        raise CaffeFormatError(src.path, "no layers found: expected a binary caffemodel "
                                         "(NetParameter with layer or layers entries)")
    return (weights, types) if with_types else weights


def read_binaryproto(path) -> np.ndarray:
    """Read a BlobProto file (e.g. a mean image) into a float32 array of its shape
    (legacy num/channels/height/width give a 4-D array)."""
    f, src = _open(path)
    with f:
        if src.size == 0:
            raise CaffeFormatError(src.path, "empty file; expected a binary BlobProto")
        return _read_blob(src, 0, src.size, "BlobProto", require_content=True)


# ----------------------------------------------------------------------------- writing


def _uvarint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _uvarint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _uvarint(len(payload)) + payload


def _blob_chunks(array, double: bool, legacy_shape: bool, what: str) -> list:
    """BlobProto encoding of ``array`` as a list of bytes / memoryview chunks."""
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(a, dtype="<f8" if double else "<f4")
    chunks = []
    if legacy_shape:
        if a.ndim > 4:
            raise ValueError(f"{what}: legacy num/channels/height/width holds at most 4 "
                             f"dimensions, got shape {a.shape}")
        for number, d in enumerate((1,) * (4 - a.ndim) + a.shape, 1):
            chunks.append(_key(number, _VARINT) + _uvarint(d))
    payload = memoryview(data.reshape(-1)).cast("B")
    if payload.nbytes and not double:
        chunks += [_key(5, _LEN) + _uvarint(payload.nbytes), payload]
    if not legacy_shape:
        dims = b"".join(_uvarint(d) for d in a.shape)
        chunks.append(_bytes_field(7, _bytes_field(1, dims) if dims else b""))
    if payload.nbytes and double:
        chunks += [_key(8, _LEN) + _uvarint(payload.nbytes), payload]
    return chunks


def _layer_types(prototxt) -> dict[str, str]:
    from .prototxt import NetDef, _as_net_parameter, read_prototxt, upgrade_v1_layer

    if prototxt is None:
        return {}
    if isinstance(prototxt, NetDef):
        return {layer.name: layer.type for layer in prototxt.layers}
    if isinstance(prototxt, (str, os.PathLike)):
        net = read_prototxt(prototxt)
    else:
        net = _as_net_parameter(prototxt)
    types = {}
    for lp in list(net.layer) + [upgrade_v1_layer(v) for v in net.layers]:
        types.setdefault(lp.name, lp.type)
    return types


def write_caffemodel(path, weights: dict, prototxt=None, *, double: bool = False,
                     legacy_shape: bool = False, v1: bool = False) -> str:
    """Write ``{layer name: [arrays]}`` as a binary caffemodel; return the path.

    Each layer gets its name, its type (from the layer of that name in ``prototxt`` -- a
    path, ``NetParameter`` or ``NetDef`` -- else ``""``) and its blobs: float ``data`` with a
    ``shape`` by default, ``double_data`` with ``double=True``, legacy num/channels/height/
    width (padded to 4-D with leading 1s) with ``legacy_shape=True``, and the legacy V1
    ``layers`` field (type as enum) with ``v1=True``. Blob bytes are streamed from the arrays.
    """
    path = os.fspath(path)
    types = _layer_types(prototxt)
    v1_enum = {name: value for value, name in pb.V1_LAYER_TYPES.items()}
    with open(path, "wb") as f:
        for name, blobs in weights.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"layer names must be non-empty strings, got {name!r}")
            if isinstance(blobs, np.ndarray) or not isinstance(blobs, (list, tuple)):
                raise TypeError(f"layer {name!r}: expected a list of arrays, got "
                                f"{type(blobs).__name__}")
            ltype = types.get(name, "")
            head = [_bytes_field(4 if v1 else 1, name.encode())]
            if v1:
                if ltype not in v1_enum:
                    raise ValueError(f"layer {name!r}: type {ltype!r} has no V1 LayerType enum")
                if ltype:
                    head.append(_key(5, _VARINT) + _uvarint(v1_enum[ltype]))
            elif ltype:
                head.append(_bytes_field(2, ltype.encode()))
            body = list(head)
            for i, blob in enumerate(blobs):
                chunks = _blob_chunks(blob, double, legacy_shape, f"layer {name!r} blob {i}")
                size = sum(memoryview(c).nbytes for c in chunks)
                body += [_key(6 if v1 else 7, _LEN) + _uvarint(size), *chunks]
            size = sum(memoryview(c).nbytes for c in body)
            f.write(_key(2 if v1 else 100, _LEN) + _uvarint(size))
            f.writelines(body)
    return path


def write_binaryproto(path, array, *, double: bool = False, legacy_shape: bool = False) -> str:
    """Write ``array`` as a binary BlobProto (mean file); return the path. ``legacy_shape``
    stores num/channels/height/width (at most 4-D) instead of ``shape``."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.writelines(_blob_chunks(array, double, legacy_shape, "binaryproto"))
    return path


__all__ = ["read_binaryproto", "read_caffemodel", "write_binaryproto", "write_caffemodel"]
