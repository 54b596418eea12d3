"""Net: a Caffe network loaded for forward passes and Layer-wise Relevance Propagation.

The graph is data: an ordered list of layers whose bottoms/tops name blobs in single-assignment
form (an in-place layer such as ReLU writes a new version ``conv1#2`` of blob ``conv1``, whose
first version is ``conv1`` or ``conv1#1``), so a
blob read by several layers (Caffe's implicit Split) simply accumulates the relevance of all its
readers. Shapes are inferred and weights checked once, at construction.

Relevance: the seed at the top layer is the output (logit) of the selected
class(es), zero elsewhere; it is propagated down layer by layer with the rule the composite
assigns to each layer, and read out at the input or at any other blob. The forward activations
are never modified, so the same call twice gives the same result.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

import numpy as np

from . import caffe, ops
from ._loader import _core
from . import onnx as onnx_io
from .composites import DEFAULT_RULES, Composite, as_composite
from .layers import (LAYER_TYPES, Eltwise, Layer, LayerError, ReLU, RelevanceContext, _Affine,
                     _RuleLayer)
from .rules import AlphaBeta, has_negative
from .sentinels import ClassesArg, RulesArg, Top, TopArg, resolve_top

if TYPE_CHECKING:
    from .diagnostics import ConservationReport

_DEFAULT_MEMORY = 2 << 30  # bytes of activations + relevance per chunk
_MACHINE_CHECK_FROM = 64 << 20  # samples needing more also get checked against the machine
# relevance_multi: layer inputs from this many floats per chunk on run one class selection at a
# time instead of tiled into one batch (Net._class_cut)
_CLASS_BATCH_FLOATS = 1 << 20
# the largest block the allocator reuses instead of mapping fresh pages (memory reuse on: glibc's
# mmap threshold as lrpfast sets it, src/cpp/kernels/host_memory.cpp)
_REUSED_BYTES = 32 << 20


class NonFiniteError(FloatingPointError):
    """A forward or relevance pass produced NaN or infinity from finite inputs.

    Raised by ``Net.forward`` / ``relevance`` / ``propagate`` (unless the Net was made with
    ``check_finite=False``). The message names the first layer whose values became
    non-finite; ``layer`` holds its name and ``stage`` is ``"forward"`` or ``"relevance"``.
    Usual causes: weights so large that products overflow float32, or a degenerate rule or
    layer parameter.
    """

    def __init__(self, message: str, layer: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.layer, self.stage = layer, stage


class SampleMemoryError(MemoryError, ValueError):
    """One sample needs more memory than ``memory_limit`` (or the memory the machine has
    left) allows; raised before any work, naming the largest layer and the bytes needed."""


def _own_weights(weights):
    """{layer: [float32 copies]} of a weights dict given by the caller (None stays None)."""
    if weights is None:
        return None
    return {name: [np.array(b, dtype=np.float32, copy=True) for b in blobs]
            if isinstance(blobs, (list, tuple)) else blobs for name, blobs in weights.items()}


def _on_device(method):
    """device='cuda:N': the new device arrays of the method (uploads, constants) go to device N."""
    @functools.wraps(method)
    def run(self, *args, **kw):
        if self.cuda_device is None:
            return method(self, *args, **kw)
        from . import cuda

        with cuda.use_device(self.cuda_device):
            return method(self, *args, **kw)
    return run


class Net:
    """A Caffe net (prototxt + caffemodel) on the CPU.

    Args:
        prototxt: path of the deploy prototxt (or a parsed NetParameter / NetDef); an LRP
            Toolbox plain-text model (``.txt``, no weights) gives a lrpfast.toolbox.ToolboxNet.
        weights: path of the caffemodel, or {layer name: [float32 arrays]} (copied: the Net
            keeps read-only copies of its weights, so later changes to the caller's arrays
            change nothing); None builds the
            structure only (forward then refuses).
        device: "cpu", or "cuda" (the CUDA engine, lrpfast.cuda; raises RuntimeError saying why
            when it is not built, cuBLAS is missing, or there is no driver/GPU).
        fold_batchnorm: fold BatchNorm/Scale layers that follow a Convolution/InnerProduct into it
            for the relevance pass (canonisation); unfoldable ones act as per-channel linear layers.
        skip_unsupported: drop layers of unsupported types (and everything that depends on them)
            instead of raising, e.g. an SSD's PriorBox/DetectionOutput heads; listed in ``skipped``.
        memory_limit: bytes one chunk of a batch may use for activations and relevance (a
            positive integer). Batches are split into chunks that fit; a single sample that
            does not fit it (or the memory the machine has available) raises
            ``SampleMemoryError`` before any work (see ``layer_memory``).
        check_finite: after each pass, check that the outputs and every layer's relevance are
            finite and raise ``NonFiniteError`` naming the first layer that was not (costs one
            read of each array; False skips it).
    """

    def __new__(cls, prototxt=None, weights=None, *args, **kw):
        """``Net("model.txt")`` (no weights, a file whose first word is a toolbox layer name)
        reads an LRP Toolbox plain-text model: a lrpfast.toolbox.ToolboxNet."""
        if cls is Net and weights is None and isinstance(prototxt, (str, os.PathLike)) \
                and os.fspath(prototxt).lower().endswith(".txt"):
            from .toolbox import ToolboxNet
            from .toolbox.model import looks_like_model
            if looks_like_model(prototxt):
                return super().__new__(ToolboxNet)
        return super().__new__(cls)

    def __init__(self, prototxt: Any, weights: Any = None, *, device: str = "cpu",
                 fold_batchnorm: bool = True, skip_unsupported: bool = False,
                 memory_limit: int = _DEFAULT_MEMORY, check_finite: bool = True) -> None:
        self.cuda_device = None            # cuda: the device index ("cuda:N")
        if str(device).startswith("cuda"):  # the CUDA engine (lrpfast.cuda) is loaded only here
            from . import cuda as _cuda_engine

            if not _cuda_engine.compiled() and not _cuda_engine.emulated():
                raise ValueError(f"device {device!r} is not available: this build has the CPU "
                                 f"engine only (no CUDA compiler at build time, or "
                                 f"LRPFAST_CUDA=OFF)")
            _cuda_engine.require_gpu()  # RuntimeError naming why (no build / no driver / no GPU)
            self.cuda_device = _cuda_engine.parse_device(device)
            device = "cuda"
        elif device != "cpu":
            raise ValueError(f"device {device!r} is not available (known: 'cpu', 'cuda', "
                             f"'cuda:N')")
        self.device = device
        self.source = str(prototxt) if isinstance(prototxt, (str, os.PathLike)) else "<net>"
        self._prototxt_source = prototxt   # compat.caffe_layers: Caffe's numbering (Input layers)
        self._local = threading.local()    # per thread: the input of its last forward()
        self._device_io = False            # cuda: the last call's inputs were device arrays
        from_onnx = onnx_io.is_onnx(prototxt)
        if from_onnx:   # an ONNX model (lrpfast.onnx): graph and weights in one file
            netdef, weights = onnx_io.read_onnx(prototxt, weights)
            self.source = onnx_io.source_name(prototxt)
        else:
            netdef = prototxt if isinstance(prototxt, caffe.NetDef) else caffe.read_net(prototxt)
        if weights is None or isinstance(weights, dict):
            # the Net keeps its own read-only copies: changing the caller's arrays afterwards
            # changes nothing, and no cached derivative (W+, W-, W^2, folded BatchNorm) goes stale
            wdict, self.weights_source = _own_weights(weights), "<arrays>"
        else:
            # only the prototxt's layers are decoded: a file's other layers cost a scan
            names = {ldef.name for ldef in netdef.layers}
            wdict = caffe.read_caffemodel(weights, layers=names)
            self.weights_source = str(weights)
        self.name = netdef.name
        self.memory_limit = _positive_bytes(memory_limit, "memory_limit")
        self.check_finite = bool(check_finite)
        self.skipped: list[str] = []
        try:
            self._build(netdef, wdict, skip_unsupported)
        except LayerError as e:
            raise LayerError(f"{self.source}: {e}") from None
        if fold_batchnorm and wdict is not None:
            self._fold_affine()
        if from_onnx:
            onnx_io.finish(self)
        if device == "cuda":
            self._ops_to_device()

    @classmethod
    def from_text(cls, text: str, weights=None, **kw) -> "Net":
        """Build from prototxt text (handy in tests and notebooks)."""
        msg = caffe.parse_prototxt(text, path="<text>")
        return cls(msg, weights, **kw)

    @classmethod
    def from_onnx(cls, model, *, input_shape=None, **kw) -> "Net":
        """Load an ONNX model: a path (any name), serialized bytes or an ``onnx.ModelProto``.
        Needs ``pip install "lrpfast[onnx]"``. Layers are named after the ONNX nodes and blobs
        after the ONNX tensors (readout by tensor name); see lrpfast.onnx.importer for the
        operators and the rule each one gets. ``Net("model.onnx")`` does the same.
        ``input_shape``: the per-sample input shape, e.g. (3, 48, 192), for a model whose
        height / width are dynamic (a dict {input name: shape} for several inputs)."""
        name = onnx_io.source_name(model)
        proto = onnx_io.load(model)
        if input_shape is not None:
            proto = onnx_io.with_input_shape(proto, input_shape, name)
        return cls(onnx_io.Named(proto, name), **kw)   # errors keep naming the file

    @classmethod
    def from_torch(cls, module, example_input, *, opset: int | None = None, **kw) -> "Net":
        """Export a torch.nn.Module (eval mode) to ONNX in memory with ``torch.onnx.export``
        and load it (see ``from_onnx``). ``example_input``: a tensor (N, C, H, W) of the input
        shape. Needs torch and onnx; lrpfast itself does not depend on torch."""
        return cls(onnx_io.export_torch(module, example_input, opset), **kw)

    # ------------------------------------------------------------------ construction
    def _build(self, netdef, wdict, skip_unsupported):
        version: dict[str, str] = {}     # user blob name -> current SSA name
        self.shapes: dict[str, tuple] = {}   # SSA name -> per-sample shape
        self.inputs: dict[str, tuple] = {}
        for name, shape in netdef.inputs:
            shape = tuple(int(d) for d in shape)
            if len(shape) < 2 or any(d <= 0 for d in shape[1:]):
                raise LayerError(f"input '{name}' has an invalid shape {shape}")
            self.inputs[name] = shape[1:]
            version[name] = name
            self.shapes[name] = shape[1:]
        if not self.inputs:
            raise LayerError("the net declares no input (input:/input_shape/Input layer)")
        self.layers: list[Layer] = []
        counts: dict[str, int] = {}
        dead: set[str] = set()   # user blob names made unavailable by skipped layers
        used_names = set()
        for ldef in netdef.layers:
            if ldef.name in used_names:
                raise LayerError(f"layer name '{ldef.name}' is used twice")
            used_names.add(ldef.name)
            index = len(self.layers)
            cls = LAYER_TYPES.get(ldef.type)
            if cls is None or any(b in dead for b in ldef.bottoms):
                if skip_unsupported:
                    why = "unsupported" if cls is None else "depends on a skipped layer"
                    self.skipped.append(f"{ldef.name} ({ldef.type}: {why})")
                    dead.update(ldef.tops)
                    continue
                raise LayerError(f"layer {index} '{ldef.name}': unsupported type '{ldef.type}' "
                                 f"(supported: {', '.join(sorted(LAYER_TYPES))}; "
                                 f"Net(..., skip_unsupported=True) drops such layers)")
            for b in ldef.bottoms:
                if b not in version:
                    raise LayerError(f"layer {index} '{ldef.name}': bottom blob '{b}' is not "
                                     f"produced by any earlier layer or input")
            in_shapes = [self.shapes[version[b]] for b in ldef.bottoms]
            blobs = None if wdict is None else wdict.get(ldef.name, [])
            layer = cls(index, ldef, in_shapes, blobs)
            layer.bottoms = [version[b] for b in ldef.bottoms]
            for t, shape in zip(ldef.tops, layer.out_shapes):
                n = counts.get(t, 0)
                ssa = t if n == 0 and t not in self.inputs else f"{t}#{n + 1}"
                counts[t] = n + 1
                version[t] = ssa
                layer.tops.append(ssa)
                self.shapes[ssa] = shape
            self.layers.append(layer)
        self.blob_versions = version
        consumed = {b for layer in self.layers for b in layer.bottoms}
        self.outputs = [s for layer in self.layers for s in layer.tops if s not in consumed]
        self._consumers: dict[str, list[Layer]] = {}
        # fold_batchnorm: head layer name -> the BatchNorm/Scale layers folded into it, in order
        self._chains: dict[str, list[Layer]] = {}
        self._chain_head: dict[str, Layer] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                self._consumers.setdefault(b, []).append(layer)
        self._producer = {t: layer for layer in self.layers for t in layer.tops}
        self.has_weights = wdict is not None
        # Eltwise SUM name -> the ReLU (slope 0) that alone reads its output: on the CPU the
        # pass computes the two in one pass and keeps only the ReLU's output (the relevance
        # recomputes the sum where it needs it, with the same bits), unless the sum is asked for
        self._sum_relu: dict[str, Layer] = {}
        for layer in self.layers:
            readers = self._consumers.get(layer.tops[0], []) if layer.tops else []
            if isinstance(layer, Eltwise) and layer.op_name == "sum" and len(readers) == 1 and \
                    type(readers[0]) is ReLU and readers[0].slope == 0.0 and \
                    layer.tops[0] not in self.outputs:
                self._sum_relu[layer.name] = readers[0]

    def _fold_affine(self):
        """Canonisation: fold BatchNorm/Scale chains that solely consume a Conv/IP output."""
        for layer in self.layers:
            if not isinstance(layer, _RuleLayer) or isinstance(layer, _Affine):
                continue
            top, chain = layer.tops[0], []
            while True:
                readers = self._consumers.get(top, [])
                if len(readers) != 1 or not isinstance(readers[0], _Affine) or top in self.outputs:
                    break
                aff = readers[0]
                layer.fold(aff.a, aff.c)
                aff.folded_into = layer.name
                chain.append(aff)
                top = aff.tops[0]
            layer.z_top = top if top != layer.tops[0] else None
            if chain:
                self._chains[layer.name] = chain
                self._chain_head.update((aff.name, layer) for aff in chain)
        self.__dict__.pop("_bps", None)   # the chains' inner blobs are no longer kept

    def _ops_to_device(self):
        """device='cuda': every layer's operators become their GPU twins (lrpfast.cuda), which
        upload their weights (and derived weights) once, at first use, and keep them."""
        from . import cuda

        twins: dict[int, object] = {}
        for layer in self.layers:
            for attr in ("op", "rel_op", "avg_op"):
                op = layer.__dict__.get(attr)
                if op is not None:
                    if id(op) not in twins:
                        twins[id(op)] = cuda.make_cuda_op(op)
                    setattr(layer, attr, twins[id(op)])

    def _check_device_input(self, name, a, shape):
        """device='cuda': a device array input (DeviceArray, CuPy, PyTorch CUDA tensor...) is
        wrapped without a copy and checked on the device. DLPack producers on a CUDA device
        (``__dlpack__``) are taken through DLPack, preferred when an object also exposes
        ``__cuda_array_interface__`` (the DLPack stream hand-over orders the producer's pending
        work before ours); other objects through ``__cuda_array_interface__`` (cuda.to_device)."""
        from . import cuda

        try:
            a = cuda.to_device(a)
        except (TypeError, ValueError, RuntimeError, BufferError) as e:
            raise ValueError(f"input {name!r}: {e}") from None
        if a.dtype != np.float32:
            raise ValueError(f"input {name!r}: a device input must be float32, got {a.dtype}")
        if a.device != self.cuda_device:
            raise ValueError(f"input {name!r} is on cuda:{a.device} but the net runs on "
                             f"cuda:{self.cuda_device} (copy it with "
                             f"lrpfast.cuda.to_device(x, device={self.cuda_device}))")
        if a.ndim == len(shape):
            a = a.reshape((1,) + a.shape)
        if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape:
            raise ValueError(f"input {name!r} expects shape (N, {', '.join(map(str, shape))}), "
                             f"got {tuple(a.shape)}")
        if a.shape[0] == 0:
            raise ValueError(f"input {name!r} is an empty batch")
        if not cuda.all_finite(a):
            raise ValueError(f"input {name!r} contains NaN or infinity")
        return a

    def _out(self, v):
        """device='cuda': results go back to the host unless the inputs were device arrays."""
        if self.device != "cuda" or self._device_io:
            return v
        if isinstance(v, dict):
            return {k: self._out(a) for k, a in v.items()}
        return v.to_host() if hasattr(v, "to_host") else v

    # ------------------------------------------------------------------ helpers
    def _ssa(self, name: str) -> str:
        """User blob name (its final version) or SSA name -> SSA name."""
        if name in self.blob_versions:
            return self.blob_versions[name]
        if name in self.shapes:
            return name
        if name.endswith("#1") and name[:-2] in self.shapes:  # the first version is stored bare
            return name[:-2]
        raise KeyError(f"no blob named {name!r} in the net (blobs: {_few(self.blob_names)})")

    @property
    def blob_names(self) -> list[str]:
        return list(self.blob_versions)

    def layer(self, key) -> Layer:
        """A layer by name or index."""
        if isinstance(key, (int, np.integer)):
            if not -len(self.layers) <= key < len(self.layers):
                raise IndexError(f"layer index {key} out of range (0..{len(self.layers) - 1})")
            return self.layers[key]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise KeyError(f"no layer named {key!r} (layers: {_few([l.name for l in self.layers])})")

    def _check_input(self, x) -> dict[str, np.ndarray]:
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"this net has inputs {list(self.inputs)}; pass a dict")
            x = {next(iter(self.inputs)): x}
        out, n = {}, None
        dev = self.device == "cuda"
        if dev:
            from . import cuda
            self._device_io = any(cuda.is_device_array(v) for v in x.values())
        for name, shape in self.inputs.items():
            if name not in x:
                raise ValueError(f"missing input {name!r}")
            a = x[name]
            if dev and cuda.is_device_array(a):
                a = self._check_device_input(name, a, shape)
                if n is not None and a.shape[0] != n:
                    raise ValueError("all inputs need the same batch size")
                n = a.shape[0]
                out[name] = a
                continue
            if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray) and not hasattr(a, "__array__"):
                a = np.from_dlpack(a)
            a = np.asarray(a)
            if a.dtype.kind not in "fiub":
                raise ValueError(f"input {name!r} must be numeric, got dtype {a.dtype}")
            if a.ndim == len(shape):
                a = a[None]
            if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape:
                raise ValueError(f"input {name!r} expects shape (N, {', '.join(map(str, shape))}), "
                                 f"got {tuple(a.shape)}")
            if a.shape[0] == 0:
                raise ValueError(f"input {name!r} is an empty batch")
            a = np.ascontiguousarray(a, dtype=np.float32)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"input {name!r} contains NaN or infinity")
            if n is not None and a.shape[0] != n:
                raise ValueError("all inputs need the same batch size")
            n = a.shape[0]
            out[name] = cuda.to_device(a) if dev else a   # cuda: host -> device at entry
        return out

    def _bytes_per_sample(self) -> int:
        """What one image costs in the accounting that splits batches (``layer_memory``), in
        bytes (the shapes are fixed when the net is built: computed once)."""
        bps = self.__dict__.get("_bps")
        if bps is None:
            bps = self._bps = max(1, sum(self.layer_memory().values()))
        return bps

    def _unmaterialised(self) -> set:
        """Blobs a pass does not keep: those inside a folded BatchNorm/Scale chain (the
        convolution's own output, a BatchNorm before its Scale) and, on the CPU, a residual sum
        computed together with its ReLU (_sum_relu); each computed only on request."""
        out = {self.layer(name).tops[0] for name in self._sum_relu} if self.device == "cpu" \
            else set()
        for head, chain in self._chains.items():
            out.add(self.layer(head).tops[0])
            out.update(aff.tops[0] for aff in chain[:-1])
        return out

    def layer_memory(self) -> dict[str, int]:
        """Bytes one sample needs at each layer (and net input), in the accounting that splits
        batches into chunks of ``memory_limit``: 8 bytes per float32 output the pass keeps
        (the activation, and room for the relevance and the alpha-beta rule's z+ of the
        layers together), and 16 bytes per output element of the largest blob, counted at
        its layer (the relevance into and out of one layer and the temporaries of its
        products, such as the alpha-beta rule's stacked signals). The values sum to what one
        sample costs. Measured peaks of whole passes (CaffeNet, VGG-16, ResNet-50; epsilon,
        alpha-beta and composites, relevance_multi included) lie at 55-90% of this estimate."""
        skip = self._unmaterialised()

        def kept(blobs):
            return sum(math.prod(self.shapes[t]) for t in blobs if t not in skip)
        per = {name: kept([name]) * 8 for name in self.inputs}
        for layer in self.layers:
            per[layer.name] = kept(layer.tops) * 8
        owner = {name: name for name in self.inputs}
        owner.update((t, layer.name) for layer in self.layers for t in layer.tops)
        biggest = max(self.shapes, key=lambda t: math.prod(self.shapes[t]))
        per[owner[biggest]] += math.prod(self.shapes[biggest]) * 16
        return per

    def _check_sample_memory(self) -> None:
        """SampleMemoryError when one sample cannot fit memory_limit or the machine."""
        need = self._bytes_per_sample()
        limit, what = self.memory_limit, f"memory_limit={self.memory_limit}"
        if need > _MACHINE_CHECK_FROM:
            avail = _available_memory()
            if avail is not None and avail < limit:
                limit, what = avail, "the memory this process can still allocate"
        if need > limit:
            name, most = max(self.layer_memory().items(), key=lambda kv: kv[1])
            raise SampleMemoryError(
                f"{self.source}: one sample needs {_mib(need)} for activations and relevance, "
                f"more than {what} ({_mib(limit)}); layer '{name}' alone needs {_mib(most)} "
                f"({need} bytes in all)")

    def _chunks(self, n: int):
        """[(start, stop)] of the chunks of a batch of n: as few as fit memory_limit, of equal
        sizes (give or take one: 8 images at 7 per chunk run as 4 + 4, not 7 + 1)."""
        self._check_sample_memory()
        size = max(1, min(n, self.memory_limit // self._bytes_per_sample()))
        return _even_parts(n, size)

    def _class_groups(self, K: int, m: int, tiled: int | None = None, largest: int = 0):
        """Split K class selections of a chunk of m images into groups whose tiled activations
        fit the memory limit (see _chunks) next to the chunk's own pass, which stays alive
        while its tiles are used (g tiles of a whole pass: g + 1 passes' worth); evenly, as
        _chunks does. ``tiled``: bytes per sample and selection that a group tiles, where that
        is less than a whole pass (the layers above _class_cut). ``largest``: bytes of the
        largest array one sample and selection makes there; a group's stays within
        _REUSED_BYTES (see _largest_array)."""
        per = self._bytes_per_sample() if tiled is None else max(1, tiled)
        g = max(1, min(K, (self.memory_limit - self._bytes_per_sample() * m) // (per * m)))
        if largest:
            g = min(g, max(1, _REUSED_BYTES // (largest * m)))
        return _even_parts(K, g)

    def _largest_array(self, upper) -> int:
        """Bytes of the largest array one sample and class selection makes in the layers
        ``upper`` of a plan: a layer's input or output, or twice its output for the
        alpha-beta rule's stacked signals. Groups of selections keep their arrays within
        _REUSED_BYTES: larger ones come as fresh pages from the system on every call (a page
        fault per 4 KiB; VGG-16 at batch 1, cmp_alpha2_flat, 10 classes: 2.42 s as one group
        against 2.27 s as two of 5)."""
        most = 0
        for layer, ctx in upper:
            k = 2 if isinstance(ctx.rule, AlphaBeta) and ctx.rule.beta != 0 else 1
            most = max([most] + [k * math.prod(self.shapes[t]) for t in layer.tops]
                       + [math.prod(self.shapes[bt]) for bt in layer.bottoms])
        return 4 * most

    def _class_cut(self, plan, m: int) -> int:
        """Where relevance_multi stops running its class selections as one batch (an index into
        ``plan``, top down): at the first layer with an input of at least _CLASS_BATCH_FLOATS
        floats per chunk of m images. Below it the planes are large enough that a GEMM over
        all selections is no faster than one per selection (VGG-16 at batch 1: 0.104 s per
        class either way), while tiling the activations for it would cost time and memory."""
        for i, (layer, _) in enumerate(plan):
            if any(m * math.prod(self.shapes[bt]) >= _CLASS_BATCH_FLOATS
                   for bt in layer.bottoms):
                return i
        return len(plan)

    def _require_weights(self):
        if not self.has_weights:
            raise ValueError(f"{self.source}: the net was loaded without weights")

    def _forward_op(self, layer, last: int):
        """The operator a pass over layers[:last] computes ``layer``'s output with."""
        return layer.rel_op if self._fused(layer, last) else layer.op

    def _fused(self, layer, last: int) -> bool:
        """Whether a pass over layers[:last] computes ``layer``'s folded BatchNorm/Scale chain
        as one product (the whole chain runs in the pass)."""
        chain = self._chains.get(layer.name)
        return chain is not None and chain[-1].index < last

    def _last_reads(self) -> list[list[str]]:
        """Per layer position: the blobs no later layer reads (freed there by a pass that keeps
        nothing; computed once)."""
        plan = self.__dict__.get("_last_reads_plan")
        if plan is None:
            last = {b: i for i, layer in enumerate(self.layers) for b in layer.bottoms}
            plan = [[] for _ in self.layers]
            for b, i in last.items():
                plan[i].append(b)
            self._last_reads_plan = plan
        return plan

    def _run_forward(self, xin: dict, stop: int | None = None, zplus: frozenset = frozenset(),
                     need: Iterable[str] = (), drop: bool = False) -> tuple[dict, dict]:
        """Blobs and layer states of a forward pass up to layer index ``stop``; the layers named
        in ``zplus`` also leave the alpha-beta rule's z+ in their state where they can compute
        it together with z (see _RuleLayer.forward_zplus).

        A Convolution/InnerProduct with a folded BatchNorm/Scale chain (fold_batchnorm) computes
        the chain's end in one product with the folded weights, x W' + b' (canonisation as in
        Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview", sec. 10.2.3), so
        the chain's per-channel passes do not run. The blobs inside the chain (the
        convolution's own output, a BatchNorm before its Scale) are then absent, unless named
        in ``need`` or the pass's last output: those are computed on the side, unfolded, from
        the same input, and later layers still read the folded end. Every call thus gives the
        same values for the chain's end, whichever blobs it asks for.

        ``drop``: an inference pass (Net.forward(..., keep=False)): each blob is freed once the
        last layer reading it has run (except the inputs and those in ``need``), and no layer
        state is kept; the values are those of the pass that keeps everything."""
        self._require_weights()
        blobs = dict(xin)
        states: dict = {}
        last = len(self.layers) if stop is None else stop + 1
        need = set(need) | (set(self.layers[last - 1].tops) if last else set())
        done: set = set()   # ReLUs computed with their residual sum
        freed = self._last_reads() if drop else None
        for pos, layer in enumerate(self.layers[:last]):
            if freed is not None and pos:   # what the layer before read last
                for b in freed[pos - 1]:
                    if b not in need and b not in xin:
                        blobs.pop(b, None)
            head = self._chain_head.get(layer.name)
            if head is not None and self._fused(head, last) or layer.name in done:
                states[layer.name] = {}   # computed with its owner
                continue
            xs = [blobs[b] for b in layer.bottoms]
            relu = self._sum_relu.get(layer.name)
            if relu is not None and relu.index < last and layer.tops[0] not in need and \
                    self.device == "cpu":
                # the sum's ReLU in the same pass; the sum itself is not kept
                blobs[relu.tops[0]] = cast(Eltwise, layer).forward_relu(xs)
                states[layer.name] = {}
                done.add(relu.name)
                continue
            if self._fused(layer, last):
                chain = self._chains[layer.name]
                owner = cast(_RuleLayer, layer)
                ys, st = owner.forward_zplus(xs, owner.rel_op) if layer.name in zplus \
                    else ([owner.rel_op.fwd(xs[0], "w", "b")], {})
                states[layer.name] = st
                blobs[chain[-1].tops[0]] = ys[0]
                inner = [layer] + chain[:-1]
                wanted = [k for k, l in enumerate(inner) if l.tops[0] in need]
                if wanted:   # readout inside the chain: unfolded, on the side
                    y = layer.forward(xs)[0][0]
                    blobs[layer.tops[0]] = y
                    for aff in chain[:wanted[-1]]:
                        y = aff.forward([y])[0][0]
                        blobs[aff.tops[0]] = y
                continue
            ys, st = (layer.forward_zplus(xs)  # type: ignore[attr-defined]  # rule layers only
                      if layer.name in zplus else layer.forward(xs))
            states[layer.name] = st
            for t, y in zip(layer.tops, ys):
                blobs[t] = y
        if drop:
            states = {}
        if self.check_finite:
            if drop and not self._ends_finite(blobs, self.layers[:last]):
                # the layer to name may be gone: the pass again, keeping every blob (raises)
                return self._run_forward(xin, stop, zplus, need)
            self._check_forward_finite(blobs, self.layers[:last])
        return blobs, states

    def _ends_finite(self, blobs: dict, ran: list) -> bool:
        """Whether the final outputs of a pass (the last layer's tops, the net outputs) are
        finite."""
        ends = set(ran[-1].tops) | {o for o in self.outputs if o in blobs} if ran else set()
        return all(_all_finite(blobs[t]) for t in ends)

    def _check_forward_finite(self, blobs: dict, ran: list) -> None:
        """NonFiniteError naming the first layer of ``ran`` with a non-finite output, when a
        final output of the pass (the last layer's tops, the net outputs) is not finite."""
        if self._ends_finite(blobs, ran):
            return
        for layer in ran:
            if not all(_all_finite(blobs[t]) for t in layer.tops if t in blobs):
                raise NonFiniteError(
                    f"{self.source}: layer {layer.index} '{layer.name}' ({layer.type}): its "
                    f"output is not finite (NaN or infinity) for a finite input; check its "
                    f"weights and parameters (Net(..., check_finite=False) skips this check)",
                    layer=layer.name, stage="forward")

    # ------------------------------------------------------------------ forward
    @_on_device
    def forward(self, x: Any, blobs: Sequence[str] | None = None, *, keep: bool = True) -> Any:
        """Run the net. x: float32 (N, C, H, W) in the net's input layout (Caffe: BGR, mean
        subtracted), or {input name: array}. Returns the output blob (N, ...) — a dict when the
        net has several outputs — or, with ``blobs=[names]``, {name: array} of those blobs.

        ``keep`` (default True, the toolbox's workflow): the pass's activations are kept (per
        thread, for a batch of one ``memory_limit`` chunk) so that ``backward_relevance`` after
        it does not compute them again. ``keep=False``: an inference pass that frees each
        activation once the layers reading it have run, as a framework's no-grad forward does:
        the same outputs, a fraction of the memory, and faster where the kept arrays would
        have been written to memory not in cache (ResNet-50, 2 threads: 9-16% at batch 1, 6-9%
        at batch 8). ``backward_relevance`` after it computes the forward pass again."""
        xin = self._check_input(x)
        # for backward_relevance, per thread: threads sharing a Net never see each other's
        # input. The pass runs on this private copy, and its activations and layer states are
        # kept (one chunk only) so that backward_relevance does not compute them again.
        keep_in = {k: v.copy() for k, v in xin.items()}
        self._local.last_input, self._local.last_forward = keep_in, None
        # dict.fromkeys: two names of one blob (e.g. 'conv1' and 'conv1#2') are computed once,
        # else their chunks would be concatenated twice (a doubled batch)
        wanted = list(dict.fromkeys(self._ssa(b) for b in blobs)) if blobs is not None \
            else self.outputs
        n = next(iter(keep_in.values())).shape[0]
        parts: dict[str, list] = {w: [] for w in wanted}
        chunks = self._chunks(n)
        for a, b in chunks:
            vals, states = self._run_forward({k: v[a:b] for k, v in keep_in.items()},
                                             need=wanted, drop=not keep)
            for w in wanted:
                parts[w].append(vals[w])
        if keep and len(chunks) == 1 and self.device != "cuda":
            self._local.last_forward = (keep_in, chunks, vals, states)
        res = {w: np.concatenate(p) if len(p) > 1 else p[0] for w, p in parts.items()}
        if blobs is not None:
            return self._out({name: res[self._ssa(name)] for name in blobs})
        return self._out(res[wanted[0]] if len(wanted) == 1
                         else {w.split("#")[0]: v for w, v in res.items()})

    def _kept_forward(self, xin: dict, chunks: list, need: Iterable[str] = ()):
        """(blobs, states) of this thread's last ``forward`` when ``xin`` is its kept input
        (the very arrays, as ``backward_relevance`` passes them), the batch is still one chunk
        and the pass holds the blobs in ``need`` (a blob inside a folded BatchNorm/Scale chain,
        or a residual sum taken by its ReLU, is held only where that forward asked for it);
        else None. Read only: the relevance
        pass never writes activations or states."""
        kept = getattr(self._local, "last_forward", None)
        if kept is None:
            return None
        keep, kchunks, blobs, states = kept
        if kchunks != chunks or keep.keys() != xin.keys() or \
                any(keep[k] is not v for k, v in xin.items()) or any(t not in blobs for t in need):
            return None
        return blobs, states

    def release(self) -> None:
        """Free what the net keeps between calls: the calling thread's last ``forward`` input
        and activations (kept for ``backward_relevance``), the weight variants the rules
        derived (W+, W-, W², stacked copies; rebuilt on the next call that needs them), and the
        freed memory the process holds for reuse (``lrpfast.release_memory()``)."""
        self._local.last_input = self._local.last_forward = None
        for layer in self.layers:
            for op in {id(o): o for o in (getattr(layer, "op", None),
                                          getattr(layer, "rel_op", None)) if o is not None}.values():
                if hasattr(op, "release"):
                    op.release()
        from . import release_memory
        release_memory()

    # ------------------------------------------------------------------ relevance
    def top_layer(self, top: TopArg = None) -> Layer:
        """The layer where relevance starts: None or ``lrpfast.LAST_INNER_PRODUCT`` = the
        highest InnerProduct layer, ``lrpfast.LOGITS`` = the layer right below the lowest
        Softmax, else a layer index or name, or a blob name (its producer). The old codes -1
        (LOGITS) and -2 (LAST_INNER_PRODUCT) still work with a DeprecationWarning. A net without
        an InnerProduct (e.g. ending in convolutions): None = the layer right below the last
        Softmax if there is one, else the last layer (``default_top_reason`` says which)."""
        asked = top
        top = resolve_top(top.item() if isinstance(top, np.integer) else top)
        if top is None or top is Top.LAST_INNER_PRODUCT:
            ips = [l for l in self.layers if l.type == "InnerProduct"]
            if not ips and top is None:
                return self._default_top_without_ip()
            if not ips:
                raise ValueError(f"{self.source}: the net has no InnerProduct layer; pass top= "
                                 f"(a layer name or index)")
            return ips[-1]
        if top is Top.LOGITS:
            for l in self.layers:
                if l.type == "Softmax":
                    return self._producer_layer(l.bottoms[0])
            raise ValueError(f"{self.source}: top={asked!r} needs a Softmax layer; the net has "
                             f"none")
        if isinstance(top, str) and not any(l.name == top for l in self.layers):
            return self._producer_layer(self._ssa(top))
        if isinstance(top, (bool, np.bool_)):   # True would silently be layer 1
            raise ValueError(f"top={top!r}: expected None, lrpfast.LOGITS, "
                             f"lrpfast.LAST_INNER_PRODUCT, a layer index or a layer or blob name")
        return self.layer(top)

    def _default_top_without_ip(self) -> Layer:
        softmax = [l for l in self.layers if l.type == "Softmax"]
        if softmax:
            return self._producer_layer(softmax[-1].bottoms[0])
        return self.layers[-1]

    def default_top_reason(self) -> str:
        """Why ``top=None`` picks its layer (named in describe_rules)."""
        if any(l.type == "InnerProduct" for l in self.layers):
            return "the highest InnerProduct"
        if any(l.type == "Softmax" for l in self.layers):
            return "no InnerProduct: the layer below the last Softmax"
        return "no InnerProduct or Softmax: the last layer"

    def _producer_layer(self, ssa):
        if ssa not in self._producer:
            raise ValueError(f"blob {ssa!r} is a net input; relevance cannot start there")
        return self._producer[ssa]

    def _plan(self, top_layer: Layer, composite: Composite, readouts: list[str]):
        """Layers the relevance passes through (top down) with their contexts; errors first."""
        owner = getattr(top_layer, "folded_into", None)
        if owner is not None and getattr(self.layer(owner), "z_top") != top_layer.tops[0]:
            end = self._producer[getattr(self.layer(owner), "z_top")].name
            raise ValueError(f"top layer '{top_layer.name}' ({top_layer.type}) is folded into "
                             f"'{owner}' with the layers up to '{end}': start at '{owner}' or "
                             f"'{end}', or load the net with fold_batchnorm=False")
        rules = composite.assign(self.layers, net=self)
        caffe_hooks = getattr(composite, "caffe", None)   # caffe mode (RelPropOpts) only
        if caffe_hooks is not None and self.device == "cuda":
            raise ValueError(f"{composite!r}: the toolbox's caffe-mode pooling/LRN treatment runs "
                             f"on the CPU engine only; use Net(..., device='cpu'), or mode="
                             f"'lrpfast' options, on device='cuda'")
        # blobs from which the top is reachable: only those carry relevance
        live = {top_layer.tops[0]}
        plan = []
        family = _family_rule(rules)   # what non-rule layers need to know of the rules
        for layer in reversed(self.layers[: top_layer.index + 1]):
            if not any(t in live for t in layer.tops):
                continue
            rule = rules.get(layer.name)
            ctx = RelevanceContext(family if rule is None else rule, composite.eps,
                                   composite.maxpool, caffe_hooks)
            plan.append((layer, ctx))
            live.update(layer.bottoms)
        for r in readouts:
            if r not in live:
                raise ValueError(f"blob {r!r} receives no relevance from layer "
                                 f"'{top_layer.name}' (it is not below it)")
        for layer, ctx in plan:
            layer.check_relevance(ctx)
        return plan

    def describe_rules(self, rules: RulesArg = DEFAULT_RULES, top: TopArg = None) -> str:
        """A table of which rule each layer gets under ``rules`` (composite, rule or name)."""
        comp = as_composite(rules)
        assigned = comp.assign(self.layers, net=self)
        top_l = self.top_layer(top) if self.has_weights or top is not None else None
        nw = max([24] + [len(layer.name) for layer in self.layers])   # columns stay aligned
        tw = max([13] + [len(layer.type) for layer in self.layers])
        head = f"{comp!r}"
        if top_l is not None:
            why = self.default_top_reason() if top is None else f"top={top!r}"
            head += f"; relevance starts at '{top_l.name}' ({why})"
        lines = [head, f"{'idx':>4}  {'layer':<{nw}} {'type':<{tw}} treatment"]
        for layer in self.layers:
            if top_l is not None and layer.index > top_l.index:
                break
            if layer.name in assigned and getattr(layer, "folded_into", None) is None:
                what = repr(assigned[layer.name])
                if isinstance(layer, _RuleLayer) and layer.z_top:
                    what += "  (BatchNorm/Scale folded in)"
            else:
                what = _treatment(layer, comp)
            lines.append(f"{layer.index:>4}  {layer.name:<{nw}} {layer.type:<{tw}} {what}")
        return "\n".join(lines)

    def _seed(self, top_val: np.ndarray, classes, n: int) -> np.ndarray:
        """Initial relevance: the top output at the selected class(es), zero elsewhere."""
        if not isinstance(top_val, np.ndarray):
            return self._seed_device(top_val, classes, n)
        flat = top_val.reshape(n, -1)
        R = np.zeros_like(flat)
        for i, idx in enumerate(self._seed_indices(flat, classes, n)):
            for k in idx:
                R[i, k] += flat[i, k]
        return R.reshape(top_val.shape)

    @staticmethod
    def _seed_indices(flat: np.ndarray, classes, n: int) -> list[list[int]]:
        """The selected output indices of each image (flat: the top output (n, m) on the host)."""
        m = flat.shape[1]
        if isinstance(classes, (int, np.integer)):
            specs = [int(classes)] * n
        else:
            specs = list(classes)
            if len(specs) != n:
                raise ValueError(f"classes: need one entry per image ({n}), got {len(specs)}; "
                                 f"an int applies to all images, a list per image is summed")
        out = []
        for i, c in enumerate(specs):
            if isinstance(c, (int, np.integer)) and c == -1:
                idx = [int(np.argmax(flat[i]))]
            elif isinstance(c, (int, np.integer)) and c == -2:
                idx = [int(k) for k in np.argsort(-flat[i], kind="stable")[:5]]
            else:
                idx = [int(c)] if isinstance(c, (int, np.integer)) else [int(k) for k in c]
                if not idx:
                    raise ValueError(f"classes[{i}] is an empty list")
                bad = [k for k in idx if not 0 <= k < m]
                if bad:
                    raise ValueError(f"classes[{i}]: class {bad[0]} out of range 0..{m - 1} "
                                     f"(-1 = top-1, -2 = top-5)")
            out.append(idx)
        return out

    def _seed_device(self, top_val, classes, n: int):
        """_seed for a device top output: the same selection as a count mask built on the host
        (the logits are downloaded only for -1/-2, which need them) times the output on the
        device (count * value = the CPU's repeated sums, exactly)."""
        specs = [classes] if isinstance(classes, (int, np.integer)) else list(classes)
        needs = any(isinstance(c, (int, np.integer)) and c in (-1, -2) for c in specs)
        m = int(np.prod(top_val.shape[1:]))
        flat = top_val.to_host().reshape(n, m) if needs else np.zeros((n, m), np.float32)
        mask = np.zeros((n, m), np.float32)
        for i, idx in enumerate(self._seed_indices(flat, classes, n)):
            for k in idx:
                mask[i, k] += 1.0
        return top_val * mask.reshape(top_val.shape)

    @_on_device
    def relevance(self, x: Any, classes: ClassesArg = -1, rules: RulesArg = DEFAULT_RULES, *,
                  top: TopArg = None, readout: str | Sequence[str] | None = None,
                  progress: bool | None = None) -> Any:
        """LRP relevance of the class(es) ``classes`` for the images ``x``.

        x: float32 (N, C, H, W) in the net's input layout. classes: an int for all images, or one
        entry per image: class index, list of classes (summed), -1 = ``lrpfast.TOP1`` (top-1),
        -2 = ``lrpfast.TOP5`` (top-5 summed); indices count over the flattened output of the top
        layer. rules: composite name, rule or Composite (default ``DEFAULT_RULES``,
        "cmp_alpha2_flat"). top: where relevance starts (see ``top_layer``). readout: blob name(s) to
        read relevance at (default: the input). Returns float32 shaped like the readout blob
        (N, ...), or a dict when ``readout`` is a list.
        """
        out = self.relevance_multi(x, [classes], rules, top=top, readout=readout,
                                   progress=progress)
        return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]

    @_on_device
    def relevance_multi(self, x: Any, class_sets: Sequence[ClassesArg],
                        rules: RulesArg = DEFAULT_RULES, *, top: TopArg = None,
                        readout: str | Sequence[str] | None = None,
                        progress: bool | None = None) -> Any:
        """Relevance for several class selections at one forward pass per chunk.

        class_sets: a list of K ``classes`` arguments (see ``relevance``). Returns float32
        (K, N, ...) (or a dict of them when ``readout`` is a list), each map equal to what
        ``relevance`` gives for that selection alone.

        The work that does not depend on the explained class -- the forward pass and the
        alpha-beta layers' z+ -- runs once. Through the upper layers (fully connected, small
        planes) the K selections run as one batch, so each weight matrix is read once for
        all of them; from the first layer whose input has about a million floats per chunk
        on, they run one after another on the chunk's own activations. Memory stays near one
        pass plus K copies of the upper layers' activations (in groups within
        ``memory_limit``)."""
        if isinstance(class_sets, (str, bytes)) or not hasattr(class_sets, "__len__"):
            raise TypeError(f"class_sets: expected a list of classes arguments, got "
                            f"{type(class_sets).__name__}")
        if len(class_sets) == 0:
            raise ValueError("class_sets is empty")
        class_sets = [_classes_arg(c) for c in class_sets]

        from .diagnostics import blowup_scale

        def seeds(top_val, a, b, n):
            out = []
            for c in class_sets:
                if not isinstance(c, (int, np.integer)):
                    c = list(c)
                    if len(c) != n:
                        raise ValueError(f"classes: need one entry per image ({n}), got {len(c)}; "
                                         f"an int applies to all images, a list per image is summed")
                    c = c[a:b]
                out.append(self._seed(top_val, c, b - a))
                if isinstance(out[-1], np.ndarray):
                    scores.append((a, b, blowup_scale(out[-1], top_val, b - a)))
            return out
        scores: list = []
        R = self._propagate_impl(x, seeds, rules, top, readout, progress, len(class_sets))
        if readout is None and isinstance(R, np.ndarray) and len(scores) == R.shape[0] * len(
                self._chunks(R.shape[1])):
            self._check_blowup(x, class_sets, rules, top, R, scores)
        return R

    def _check_blowup(self, x, class_sets, rules, top, R, scores):
        """One ConservationWarning naming the layer (lrpfast.diagnostics) when an image's input
        relevance sums to more than BLOWUP times its score (or the RMS of its top outputs,
        if larger) under an LRP (not gradient) rule. The diagnosis (a conservation pass of that
        image) runs once per net, rules and top: a rule that blows up does so on every call,
        and repeating the pass would double the cost of each batch-1 call."""
        from .diagnostics import BLOWUP
        comp = as_composite(rules)
        key = (repr(comp), repr(top))
        seen = self.__dict__.setdefault("_blowup_seen", set())
        if key in seen:
            return
        gradient = self.__dict__.setdefault("_gradient_like", {})   # per composite: fixed
        if key[0] not in gradient:
            gradient[key[0]] = bool(getattr(_family_rule(comp.assign(self.layers, net=self)),
                                            "gradient_like", False))
        if gradient[key[0]]:
            return
        K = len(class_sets)
        for j, (a, b, sc) in enumerate(scores):
            k = j % K
            tot = R[k, a:b].reshape(b - a, -1).sum(axis=1, dtype=np.float64)
            bad = np.flatnonzero(np.abs(tot) > BLOWUP * sc)
            if bad.size:
                i = a + int(bad[0])
                c = class_sets[k]
                ci = c if isinstance(c, (int, np.integer)) else [list(c)[i]]
                xi = {n: np.asarray(v)[i:i + 1] for n, v in self._check_input(x).items()}
                seen.add(key)
                self.conservation(xi, ci, rules, top=top)
                return

    def conservation(self, x: Any, classes: ClassesArg = -1, rules: RulesArg = DEFAULT_RULES, *,
                     top: TopArg = None, rtol: float = 0.05,
                     warn: bool = True) -> ConservationReport:
        """The relevance sum after every layer against the explained score, and the first layer
        where it departs by more than ``rtol``; see :func:`lrpfast.diagnostics.conservation`."""
        from .diagnostics import conservation
        return conservation(self, x, classes, rules, top=top, rtol=rtol, warn=warn)

    @_on_device
    def propagate(self, x: Any, R_top: Any, *, top: TopArg, rules: RulesArg = DEFAULT_RULES,
                  readout: str | Sequence[str] | None = None) -> Any:
        """Propagate a given relevance ``R_top`` (shaped like ``top``'s output (N, ...)) down to
        ``readout`` (default: the input blob). Same return convention as ``relevance``."""
        on_dev = False
        if self.device == "cuda":
            from . import cuda
            on_dev = cuda.is_device_array(R_top)
        R_top = cuda.to_device(R_top) if on_dev else np.asarray(R_top, dtype=np.float32)
        layer = self.top_layer(top)
        exp = (next(iter(self._check_input(x).values())).shape[0],) + self.shapes[layer.tops[0]]
        if R_top.shape != exp:
            raise ValueError(f"R_top must have the shape of layer '{layer.name}''s output {exp}, "
                             f"got {R_top.shape}")
        if not (cuda.all_finite(R_top) if on_dev else np.all(np.isfinite(R_top))):
            raise ValueError("R_top contains NaN or infinity")
        if self.device == "cuda" and not on_dev:
            R_top = cuda.to_device(R_top)   # host -> device at entry

        def seeds(top_val, a, b, n):
            if self.device == "cuda":
                return [R_top[a:b]]
            return [np.ascontiguousarray(R_top[a:b])]
        out = self._propagate_impl(x, seeds, rules, top, readout, False, 1)
        return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]

    def _propagate_impl(self, x, seeds, rules, top, readout, progress, K):
        self._require_weights()
        xin = self._check_input(x)
        comp = as_composite(rules)
        top_layer = self.top_layer(top)
        if isinstance(readout, tuple):
            readout = list(readout)
        names = readout if isinstance(readout, list) else [readout or next(iter(self.inputs))]
        ssa_out = [self._ssa(r) for r in names]
        plan = self._plan(top_layer, comp, ssa_out)
        n = next(iter(xin.values())).shape[0]
        chunks = self._chunks(n)
        dev = self.device == "cuda"
        if dev:   # device arrays cannot be written in slices: parts per (readout, k, chunk)
            parts = {r: [[None] * len(chunks) for _ in range(K)] for r in ssa_out}
        else:
            results = {r: np.zeros((K, n) + self.shapes[r], np.float32) for r in ssa_out}
        bar = _Progress(len(chunks), "relevance", progress)
        # z+ of the alpha-beta layers comes with the forward pass where it shares its columns
        zplus = frozenset(layer.name for layer, op in self._alpha_beta_layers(plan, top_layer)
                          if op is self._forward_op(layer, top_layer.index + 1))
        # backward_relevance after forward: reuse it
        kept = self._kept_forward(xin, chunks, top_layer.tops)
        if kept is None:   # another input: the kept pass would only add to this pass's peak
            self._local.last_forward = None
        for ci, (a, b) in enumerate(chunks):
            blobs, states = kept or self._run_forward({k: v[a:b] for k, v in xin.items()},
                                                      stop=top_layer.index, zplus=zplus)
            R0s = seeds(blobs[top_layer.tops[0]], a, b, n)
            if dev:
                for k, R0 in enumerate(R0s):
                    def sink(bt, layer, rin, k=k, ci=ci):
                        if bt in ssa_out:
                            p = parts[bt][k][ci]
                            parts[bt][k][ci] = rin if p is None else p + rin
                    if top_layer.tops[0] in ssa_out:
                        sink(top_layer.tops[0], top_layer, R0)
                    self._backward(plan, top_layer, blobs, states, R0, sink)
            else:
                # several class selections share one backward pass where that pays: through the
                # upper layers (small planes, fully connected) the chunk's activations are tiled
                # along the batch axis, in groups that fit memory_limit, so the products of all
                # selections run as one larger GEMM; below the cut (_class_cut: large planes,
                # where a larger GEMM gains nothing) each selection goes on alone on the
                # chunk's own activations, which are never tiled
                m = b - a
                if K == 1:   # one selection: nothing to share or tile
                    def sink0(bt, layer, rin, a=a, b=b):  # type: ignore[misc]
                        if bt in ssa_out:
                            results[bt][0, a:b] += rin
                    if top_layer.tops[0] in ssa_out:
                        sink0(top_layer.tops[0], top_layer, R0s[0])
                    self._backward(plan, top_layer, blobs, states, R0s[0], sink0, keeps=ssa_out)
                    bar.update()
                    continue
                cut = self._class_cut(plan, m)
                upper, lower = plan[:cut], plan[cut:]
                # class-independent products (z+ of the alpha-beta layers): computed once per
                # chunk for all its class selections
                shared = self._shared_zplus(plan, top_layer, blobs, states)
                own = {ln: dict(st, zp=shared[ln]) if ln in shared else st
                       for ln, st in states.items()}
                used = {bt for layer, _ in upper
                        for bt in (*layer.bottoms, *layer.tops, getattr(layer, "z_top", None))}
                mem = self.layer_memory()
                tiled = sum(mem[layer.name] for layer, _ in upper) or \
                    8 * math.prod(self.shapes[top_layer.tops[0]])   # no upper layers: the seeds
                for k0, k1 in self._class_groups(K, m, tiled, self._largest_array(upper)):
                    g = k1 - k0
                    tb = {name: _tile(v, g, m) for name, v in blobs.items() if name in used}
                    ts = {layer.name: {key: _tile(v, g, m) for key, v in own[layer.name].items()}
                          for layer, _ in upper}
                    R0 = R0s[k0] if g == 1 else np.concatenate(R0s[k0:k1])

                    def sink(bt, layer, rin, k0=k0, k1=k1, a=a, b=b, m=m):  # type: ignore[misc]
                        if bt in ssa_out:
                            results[bt][k0:k1, a:b] += rin.reshape((k1 - k0, m) + rin.shape[1:])
                    if top_layer.tops[0] in ssa_out:
                        sink(top_layer.tops[0], top_layer, R0)
                    rel = self._backward(upper, top_layer, tb, ts, R0, sink, keeps=ssa_out)
                    del tb, ts, R0   # this group's tiles go before the next group's are made
                    for k in range(g if lower else 0):
                        def sink1(bt, layer, rin, k=k0 + k, a=a, b=b):  # type: ignore[misc]
                            if bt in ssa_out:
                                results[bt][k, a:b] += rin
                        self._backward(lower, top_layer, blobs, own,
                                       {t: r[k * m:(k + 1) * m] for t, r in rel.items()}, sink1,
                                       keeps=ssa_out)
            bar.update()
        bar.close()
        if dev:
            results = {r: self._assemble_device(parts[r], chunks, self.shapes[r])
                       for r in ssa_out}
        if hasattr(comp, "postprocess"):   # e.g. toolbox code 99: sensitivity = |gradient|
            results = {r: comp.postprocess(v) for r, v in results.items()}
        if isinstance(readout, list):
            return self._out({name: results[s] for name, s in zip(names, ssa_out)})
        return self._out(results[ssa_out[0]])

    @staticmethod
    def _relevance_op(layer, top_layer):
        """The operator a rule layer's relevance uses: the unfolded one where the pass is
        seeded at its own output (the top), else rel_op (with BatchNorm/Scale folded in)."""
        return layer.op if layer is top_layer else layer.rel_op

    @classmethod
    def _alpha_beta_layers(cls, plan, top_layer):
        """(layer, relevance operator) of the alpha-beta layers of ``plan``."""
        return [(layer, cls._relevance_op(layer, top_layer)) for layer, ctx in plan
                if isinstance(ctx.rule, AlphaBeta) and isinstance(layer, _RuleLayer)
                and getattr(layer, "folded_into", None) is None]

    @classmethod
    def _shared_zplus(cls, plan, top_layer, blobs, states) -> dict:
        """{layer name: z+} for the alpha-beta layers of ``plan`` that take the x >= 0 path and
        whose forward pass did not already leave z+ in ``states``: z+ depends on the
        activations only, so relevance_multi computes it once per chunk instead of once per
        explained class (the rule then uses it from the layer state)."""
        out = {}
        for layer, op in cls._alpha_beta_layers(plan, top_layer):
            if "zp" in states[layer.name]:
                continue
            x = blobs[layer.bottoms[0]]
            if op.stacked_pm and not has_negative(x):
                out[layer.name] = op.fwd(x, "pos", "pos")
        return out

    @staticmethod
    def _assemble_device(parts, chunks, shape):
        """(K, n, ...) on the device from the relevance parts [k][chunk] (None: no relevance)."""
        from . import cuda

        rows = []
        for per_chunk in parts:
            cs = [cuda.DeviceArray(cuda._load().zeros([b - a, *shape])) if p is None else p
                  for p, (a, b) in zip(per_chunk, chunks)]
            rows.append(cs[0] if len(cs) == 1 else np.concatenate(cs))
        rows = [r.reshape((1,) + r.shape) for r in rows]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _backward(self, plan, top_layer, blobs, states, R0, sink, stop_after=None, keeps=None):
        """One relevance pass over ``plan`` from the seed ``R0`` at ``top_layer``'s output;
        ``sink(blob, layer, R)`` sees every relevance a layer hands to one of its bottoms.
        ``stop_after``: a layer after which the pass ends. ``R0`` may also be a dict {blob:
        relevance} of the relevances still to pass down (a pass resumed lower in the plan).
        ``keeps``: the blobs whose relevance ``sink`` records (None: any may be); a layer whose
        one bottom is not among them and already holds a relevance from another layer adds it
        in its own last pass (ops.offer_sum), and the sink sees that sum.
        Returns that dict as the pass leaves it: relevances no layer of ``plan`` consumed."""
        rel = dict(R0) if isinstance(R0, dict) else {top_layer.tops[0]: R0}
        for layer, ctx in plan:
            Rs = [rel.pop(t, None) for t in layer.tops]
            if all(r is None for r in Rs):
                continue
            st = states[layer.name]
            if isinstance(layer, _RuleLayer) and layer.z_top:
                # the top's BatchNorm/Scale chain (above it, not computed) does not apply: it
                # takes its unfolded operator; below the top, z is the folded chain's end
                op = self._relevance_op(layer, top_layer)
                st = dict(st, op=op) if op is layer.op else dict(st, z=blobs[layer.z_top])
            # .get: blobs inside a folded chain are not computed (its layers need none), nor a
            # sum taken by its ReLU (Eltwise recomputes it, the ReLU gates by its output)
            xs = [blobs.get(bt) for bt in layer.bottoms]
            ys = [blobs.get(t) for t in layer.tops]
            ops.forget_finite()
            held = rel.get(layer.bottoms[0]) if len(layer.bottoms) == 1 else None
            if keeps is not None and layer.bottoms[0] not in keeps and \
                    type(held) is np.ndarray and held.dtype == np.float32 and \
                    held.flags.c_contiguous:
                ops.offer_sum(held)   # the layer may add it in its last pass (see _add)
            try:
                rins = layer.relevance(xs, ys, st, Rs, ctx)
            finally:
                summed = ops.withdraw_sum()
            for bt, rin in zip(layer.bottoms, rins):
                if rin is None:
                    continue
                if not getattr(rin, "_lrpfast_device", False):
                    rin = np.asarray(rin, dtype=np.float32)
                # (a relevance passed on unchanged was checked where it was made; one its
                # kernel tested while writing it is not read again)
                if self.check_finite and not any(rin is r for r in Rs) and \
                        not ops.noted_finite(rin) and not _all_finite(rin):
                    raise NonFiniteError(
                        f"{self.source}: layer {layer.index} '{layer.name}' ({layer.type}): its "
                        f"relevance is not finite (NaN or infinity); check the rule's "
                        f"parameters and the layer's weights (Net(..., check_finite=False) "
                        f"skips this check)", layer=layer.name, stage="relevance")
                sink(bt, layer, rin)
                if summed is not None:
                    if rin is not summed:   # a rule must return the product that took the offer
                        raise RuntimeError(f"{self.source}: layer '{layer.name}': its relevance "
                                           f"is not the transposed product that added the "
                                           f"relevance its bottom already held")
                    rel[bt] = rin
                else:
                    rel[bt] = rin if bt not in rel else _add(rel[bt], rin)
            ops.forget_finite()
            if layer is stop_after:
                break
        return rel

    # ------------------------------------------------------------------ toolbox (lrpfast.compat)
    @_on_device
    def backward_relevance(self, classinds, opts=None):
        """Toolbox ``Backward_Relevance`` after ``forward(x)``; see lrpfast.compat."""
        self._toolbox_on_cpu()
        from .compat import backward_relevance
        return backward_relevance(self, classinds, opts)

    @_on_device
    def backward_relevance_multi(self, classinds, opts=None):
        """Toolbox ``Backward_Relevance_multi`` (one class list per image); see lrpfast.compat."""
        self._toolbox_on_cpu()
        from .compat import backward_relevance_multi
        return backward_relevance_multi(self, classinds, opts)

    def _toolbox_on_cpu(self):
        if self.device == "cuda":
            raise NotImplementedError(
                "backward_relevance (the toolbox API, lrpfast.compat) runs on the CPU engine only; "
                "on device='cuda' use net.relevance(x, classes, rules=RelPropOpts(...)) with "
                "mode='lrpfast' options, or load the net with device='cpu'")

    def _repr_html_(self) -> str:
        """A table of the layers for Jupyter."""
        import html
        rows = "".join(
            f"<tr><td>{layer.index}</td><td>{html.escape(layer.name)}</td><td>{layer.type}</td>"
            f"<td>{html.escape(str([self.shapes[t] for t in layer.tops]))}</td>"
            f"<td>{html.escape(layer.describe())}</td></tr>" for layer in self.layers)
        head = html.escape(f"lrpfast.Net '{self.name}' ({self.source}), inputs " + ", ".join(
            f"{k}{v}" for k, v in self.inputs.items()) + (f"; skipped: {', '.join(self.skipped)}"
                                                           if self.skipped else ""))
        return (f"<details><summary>{head}</summary><table><tr><th>#</th><th>layer</th>"
                f"<th>type</th><th>output</th><th></th></tr>{rows}</table></details>")

    def __repr__(self) -> str:
        lines = [f"lrpfast.Net '{self.name}' ({self.source}), inputs "
                 + ", ".join(f"{k}{v}" for k, v in self.inputs.items())]
        for layer in self.layers:
            lines.append(f"{layer.index:>4}  {layer.name:<24} {layer.type:<13} "
                         f"{','.join(layer.bottoms)} -> {','.join(layer.tops)} "
                         f"{[self.shapes[t] for t in layer.tops]} {layer.describe()}")
        if self.skipped:
            lines.append("skipped: " + ", ".join(self.skipped))
        return "\n".join(lines)


def _even_parts(n: int, most: int) -> list:
    """[(start, stop)]: [0, n) in as few parts of at most ``most`` as possible, of equal sizes
    give or take one (the larger first)."""
    k = -(-n // most)
    base, extra = divmod(n, k)
    bounds = [0]
    for i in range(k):
        bounds.append(bounds[-1] + base + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def _tile(v, g: int, m: int):
    """Repeat a batch-leading array (blob or layer state) g times along the batch axis."""
    if g == 1 or not isinstance(v, np.ndarray) or v.ndim == 0 or v.shape[0] != m:
        return v
    return np.concatenate([v] * g)


def _add(a, b):
    """a + b for the relevance of a blob that several layers read (a residual block's input):
    on the CPU the engine's threaded sum (numpy adds on one thread), the same float32 bits."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.shape == b.shape and \
            a.dtype == b.dtype == np.float32:
        return _core.eltwise_forward([a, b], "sum")[0]
    return a + b


def _family_rule(rules: dict):
    """For layers without a rule: any gradient-like rule in the assignment decides the family."""
    for r in rules.values():
        if getattr(r, "gradient_like", False):
            return r
    return next(iter(rules.values()), None) or _LRP_PASS


class _LrpPass:
    gradient_like = False

    def relu(self, R, x):
        return R


_LRP_PASS = _LrpPass()


def _treatment(layer, comp) -> str:
    t = layer.type
    own = getattr(comp, "describe_layer", None)   # e.g. the toolbox mode's pooling rules
    if own is not None and own(layer):
        return own(layer)
    if t == "Pooling":
        if layer.method == "max":
            return "winner-take-all" if comp.maxpool == "wta" else f"as average, z-rule eps={comp.eps:g}"
        return f"proportional (z-rule, eps={comp.eps:g})"
    if t == "Eltwise":
        return {"sum": f"proportional (eps={comp.eps:g})", "max": "winner-take-all",
                "prod": "gradient only"}[layer.op_name]
    if getattr(layer, "input_normalisation", False):
        return "identity (input normalisation)"
    if t in ("BatchNorm", "Scale") and getattr(layer, "folded_into", None):
        return f"folded into '{layer.folded_into}'"
    if t == "Softmax":
        return "(above the top: not reached)"
    return {"ReLU": "pass", "TanH": "pass", "Sigmoid": "pass", "Power": "pass", "Clip": "pass",
            "PReLU": "pass", "HardSigmoid": "pass", "HardSwish": "pass",
            "Gate": "all to the gated input (gate constant)",
            "Dropout": "pass", "LRN": "identity", "Normalize": "identity",
            "Concat": "slice", "Split": "sum", "Flatten": "reshape", "Reshape": "reshape",
            "Permute": "inverse permutation"}.get(t, "")


class _Progress:
    """A progress bar for runs of several chunks (auto: on a terminal or in a Jupyter
    notebook). tqdm (``tqdm.auto``: a widget in notebooks) draws it where it is installed;
    otherwise a minimal text bar on stderr."""

    def __init__(self, total: int, label: str, enabled: bool | None):
        if enabled is None:
            enabled = total > 1 and (sys.stderr.isatty() or _in_notebook())
        self.total, self.label, self.enabled, self.done = total, label, bool(enabled), 0
        self._tqdm = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                self._tqdm = tqdm(total=total, desc=label)
            except ImportError:
                pass

    def update(self):
        self.done += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
        elif self.enabled:
            w = 30
            f = int(w * self.done / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * f}{'.' * (w - f)}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            sys.stderr.write("\n")


def _in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session."""
    ip = sys.modules.get("IPython")
    shell = ip.get_ipython() if ip is not None and hasattr(ip, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _positive_bytes(value, what: str) -> int:
    """A positive byte count (an integer, or an integral float such as 2e9)."""
    ok = isinstance(value, (int, np.integer, float, np.floating)) and \
        not isinstance(value, (bool, np.bool_))
    if ok and math.isfinite(value) and value == int(value) and value > 0:
        return int(value)
    raise ValueError(f"{what} must be a positive number of bytes, got {value!r}")


def _few(names: list, limit: int = 20) -> str:
    """At most ``limit`` names and a count of the rest: messages stay short for any net."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _available_memory() -> int | None:
    """Bytes this process may still allocate: the lower of the kernel's MemAvailable and what
    an address-space limit (``ulimit -v``) leaves; None where neither is known."""
    out = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    out.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            out.append(max(0, soft - used))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(out) if out else None


def _all_finite(v) -> bool:
    """No NaN or infinity in ``v`` (host or device array). Host float32 (the engine's own
    arrays): one native parallel pass over the exponent bits; other host arrays: one sum
    (vectorised, no temporary), and only when it is not finite (a NaN/inf, or finite values
    overflowing the sum) an exact element test decides."""
    if not isinstance(v, np.ndarray):
        from . import cuda
        return bool(cuda.all_finite(v))
    if v.dtype == np.float32 and v.flags.c_contiguous:
        return bool(_core.all_finite(v))
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.add.reduce(v, axis=None))):
            return True
    return bool(np.isfinite(v).all())


def _is_int(c) -> bool:
    return isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))


def _classes_arg(classes):
    """Check and normalise one ``classes`` argument of relevance(): an int (for all images)
    or one entry per image, each an int or a non-empty list of ints; a 0-d integer array
    counts as an int. TypeError naming the argument otherwise (bools, floats, None...)."""
    if isinstance(classes, np.ndarray) and classes.ndim == 0:
        classes = classes[()]
    if _is_int(classes):
        return int(classes)
    if isinstance(classes, (str, bytes, dict)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"classes: expected an int or one entry per image, got "
                        f"{type(classes).__name__} {classes!r}")
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, np.ndarray) and c.ndim == 0:
            c = c[()]
        if _is_int(c):
            out.append(int(c))
            continue
        if isinstance(c, (str, bytes, dict)) or not hasattr(c, "__iter__"):
            raise TypeError(f"classes[{i}]: expected an int or a list of ints, got "
                            f"{type(c).__name__} {c!r}")
        ks = list(c)
        bad = [k for k in ks if not _is_int(k)]
        if bad:
            raise TypeError(f"classes[{i}]: expected ints, got {type(bad[0]).__name__} "
                            f"{bad[0]!r}")
        out.append([int(k) for k in ks])
    return out
