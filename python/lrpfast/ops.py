"""Linear operators over the native kernels: the only interface the rules of :mod:`lrpfast.rules`
need. Each operator offers

* ``fwd(x, kind, bias)``: the forward product with a weight variant
  (kind: "w" = W, "pos" = W+, "neg" = W-, "sq" = W**2, "ones" = all-ones of W's shape) plus
  the bias variant (None, "b" = b, "pos" = b+, "neg" = b-);
* ``bwd(s, kind)``: the transposed product (gradient w.r.t. the input) with that variant;
* ``pm_signal(R, z, zp, alpha, beta, guards)`` (Convolution/InnerProduct, ``stacked_pm``): the
  alpha-beta signal [alpha*R/z+ ; -beta*R/(z - z+)] laid out for ``bwd(s, "pm")``, the transposed
  product with the stacked weights [W+; W-] (per group): both halves of alpha-beta in ONE gemm;
* ``fwd_zplus(x)`` (ConvOp, where ``pairs_zplus(x)``): ``(fwd(x, "w", "b"),
  fwd(x, "pos", "pos"))`` in one pass over x's im2col columns, with the stacked weights
  "wpos" = [W; W+] (per group);
* ``fwd_count(x_shape, kind)``: ``fwd(ones, kind, None)`` for one sample, cached, broadcast to
  the batch: the per-output normaliser of the flat and w^2 rules (padding excluded);
* ``bwd_signal(R, kind, z=, eps=, times=)``: ``times * bwd(R / z_eps, kind)``, the tail every
  LRP rule shares (fused into one native call for convolutions, bit-identical either way);
* ``bwd_flat(R, x_shape)``: the flat rule's ``bwd(R / fwd_count(.., "ones"), "ones")``
  (convolutions sum over output channels first and skip the all-ones gemm).

Derived weights are computed once per operator (once per net), never per call.
"""
from __future__ import annotations

import threading

import numpy as np

from ._loader import _core

_KINDS = ("w", "pos", "neg", "sq", "ones", "pm", "wpos")

# Arrays a kernel found all finite in the pass that wrote them (per thread), so that the net's
# non-finite check of a layer's relevance need not read them again (at batch 8 that second pass
# over every relevance array was 4-5% of a ResNet-50 epsilon pass). See note_finite.
_finite = threading.local()


def note_finite(*arrays) -> None:
    """Records arrays that the kernel which just wrote them found free of NaN and infinity.
    Only for a kernel's fresh output, before anything else can change it: Net forgets the notes
    after each layer (forget_finite) and asks noted_finite before its own check."""
    notes = getattr(_finite, "arrays", None)
    if notes is None:
        _finite.arrays = notes = []
    notes.extend(arrays)


def noted_finite(a) -> bool:
    """Whether ``a`` itself (not an equal array) was recorded by note_finite since the last
    forget_finite on this thread."""
    return any(a is n for n in getattr(_finite, "arrays", ()))


def forget_finite() -> None:
    _finite.arrays = []


# A relevance the net already holds for a layer's bottom (a blob several layers read), offered to
# the layer's transposed product so that it adds it in its last pass instead of the net adding it
# in another (per thread; see offer_sum).
_sums = threading.local()


def offer_sum(target) -> None:
    """Offers ``target`` (float32, C-contiguous) to the next fused transposed product of this
    thread whose result has its shape: that product returns target + its own result, as the
    net's sum of the two would be (withdraw_sum tells whether one took it)."""
    _sums.offer, _sums.result = target, None


def _take_sum(shape):
    """The offered array when it fits a result of ``shape`` (taken: offered once only)."""
    t = getattr(_sums, "offer", None)
    if t is None or t.shape != tuple(shape):
        return None
    _sums.offer = None
    return t


def withdraw_sum():
    """Ends the offer: the result array that includes the offered relevance, or None."""
    r = getattr(_sums, "result", None)
    _sums.offer = _sums.result = None
    return r


def _kernels(a):
    from .rules import kernels
    return kernels(a)


def _stack_per_group(a: np.ndarray, b: np.ndarray, group: int) -> np.ndarray:
    """a and b (O, ...) stacked along the output axis within each group: (2*O, ...) whose
    group gr holds [a_gr; b_gr] (the order the native kernels take stacked weights in)."""
    o = a.shape[0]
    split = (group, o // group) + a.shape[1:]
    st = np.stack([a.reshape(split), b.reshape(split)], axis=1)
    return np.ascontiguousarray(st.reshape((2 * o,) + a.shape[1:]))


def _variant(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "w":
        return w
    if kind == "pos":
        return np.maximum(w, 0)
    if kind == "neg":
        return np.minimum(w, 0)
    if kind == "sq":
        return w * w
    if kind == "ones":
        return np.ones_like(w)
    raise ValueError(f"unknown weight variant {kind!r} (known: {_KINDS})")


class LinearOp:
    """Base: caches weight/bias variants and the flat/w^2 normalisers."""

    #: offers the stacked weights "pm" = [W+; W-] (per group) and ``pm_signal``
    stacked_pm = False
    group = 1

    def __init__(self, w: np.ndarray, b: np.ndarray | None, in_shape: tuple):
        self.in_shape = tuple(int(d) for d in in_shape)  # per-sample input shape, no batch axis
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.b = None if b is None else np.ascontiguousarray(b, dtype=np.float32)
        self._w_cache: dict[str, np.ndarray] = {"w": self.w}
        self._b_cache: dict[str, np.ndarray | None] = {"b": self.b}
        self._count_cache: dict[tuple, np.ndarray] = {}

    def weights(self, kind: str) -> np.ndarray:
        if kind not in self._w_cache:
            if self.stacked_pm and kind in ("pos", "neg", "pm"):
                self._stack_pm()
            elif kind == "wpos":
                self._w_cache[kind] = _stack_per_group(self.w, self.weights("pos"), self.group)
            else:
                self._w_cache[kind] = np.ascontiguousarray(_variant(self.w, kind))
        return self._w_cache[kind]

    def _stack_pm(self):
        """"pm": W+ and W- stacked along the output axis within each group, shape (2*O, ...).
        With one group, "pos" and "neg" are views of its two halves (no extra memory)."""
        o = self.w.shape[0]
        pos, neg = np.maximum(self.w, 0), np.minimum(self.w, 0)
        self._w_cache["pm"] = pm = _stack_per_group(pos, neg, self.group)
        if self.group == 1:
            pos, neg = pm[:o], pm[o:]
        self._w_cache["pos"], self._w_cache["neg"] = pos, neg

    def release(self) -> None:
        """Drop the derived weights, biases and normalisers (rebuilt when next needed)."""
        self._w_cache = {"w": self.w}
        self._b_cache = {"b": self.b}
        self._count_cache = {}

    def bias(self, kind: str | None) -> np.ndarray | None:
        if kind is None or self.b is None:
            return None
        if kind not in self._b_cache:
            if kind == "wpos":
                self._b_cache[kind] = _stack_per_group(self.b, self.bias("pos"), self.group)
            else:
                self._b_cache[kind] = np.ascontiguousarray(_variant(self.b, kind))
        return self._b_cache[kind]

    def fwd(self, x: np.ndarray, kind: str = "w", bias: str | None = "b") -> np.ndarray:
        """z = x W(kind)^T + b(bias) for the weight variant ``kind``; x: (N, *in_shape)."""
        raise NotImplementedError

    def pairs_zplus(self, x) -> bool:
        """True where ``fwd_zplus(x)`` computes z and z+ in one pass, saving work over two
        ``fwd`` calls (operators without it: never)."""
        return False

    def fwd_count(self, x_shape: tuple, kind: str) -> np.ndarray:
        key = (tuple(x_shape[1:]), kind)
        if key not in self._count_cache:
            ones = np.ones((1,) + tuple(x_shape[1:]), dtype=np.float32)
            self._count_cache[key] = self.fwd(ones, kind, None)
        n = self._count_cache[key]
        return np.broadcast_to(n, (x_shape[0],) + n.shape[1:])

    def bwd_signal(self, R, kind="w", *, z=None, eps=0.0, times=None):
        """The tail every LRP rule shares: ``times * bwd(stabilized_divide(R, z, eps), kind)``,
        each step only when its argument is given (z: the denominators, shaped like R; times:
        shaped like the input). Operators with a fused kernel (ConvOp) override it; the result
        is bit-identical either way."""
        s = R if z is None else _kernels(R).stabilized_divide(R, z, float(eps), True)
        c = self.bwd(s, kind)
        return c if times is None else times * c

    def bwd_flat(self, R, x_shape):
        """The flat rule's transposed product bwd(R / n, "ones"), n = fwd_count(x_shape, "ones")
        (the non-padded inputs of each output). ConvOp overrides it with a cheaper order."""
        n = self.fwd_count(x_shape, "ones")
        return self.bwd(_kernels(R).stabilized_divide(R, n, 0.0, True), "ones")

    # subclasses: fwd(x, kind, bias), bwd(s, kind)


class ConvOp(LinearOp):
    """Convolution, x (N,C,H,W) -> (N,O,Ho,Wo); w (O, C/group, kh, kw)."""

    stacked_pm = True

    def __init__(self, w, b, in_shape, stride, pad, dilation, group):
        super().__init__(w, b, in_shape)
        self.stride, self.pad, self.dilation, self.group = stride, pad, dilation, group
        self._u_cache: dict[tuple, np.ndarray] = {}

    def _winograd(self, kind: str, n: int, backward: bool):
        """The Winograd-transformed kernels of weights(kind) when a call on n images takes that
        path (Lavin & Gray 2016: U = G g G^T, computed once per weight set and direction and
        kept, instead of on every call: at batch 1 the transform cost more than the
        products); None on the other paths."""
        w = self.weights(kind)
        # a stacked pair ("wpos") takes the path of one weight set's own convolution
        if not _core.winograd_applies(n, self.in_shape, self.w.shape, self.stride, self.pad,
                                      self.dilation, self.group, backward):
            return None
        key = (kind, backward)
        u = self._u_cache.get(key)
        if u is None:
            u = self._u_cache[key] = _core.winograd_kernels(w, self.group, backward)
        return u

    def release(self) -> None:
        super().release()
        self._u_cache = {}

    def fwd(self, x, kind="w", bias="b"):
        return _core.conv_forward(x, self.weights(kind), self.bias(bias), self.stride, self.pad,
                                  self.dilation, self.group,
                                  winograd=self._winograd(kind, x.shape[0], False))

    def pairs_zplus(self, x) -> bool:
        """fwd_zplus shares work on every path but Winograd in deterministic mode, where z and
        z+ come from each weight set's own call (an image's bits then never depend on how the
        net computed them)."""
        return not _core.get_deterministic() or _core.conv_forward_algorithm(
            x, self.w, self.stride, self.pad, self.dilation, self.group) != "winograd"

    def fwd_zplus(self, x):
        """(z, z+) = (fwd(x, "w", "b"), fwd(x, "pos", "pos")), the alpha-beta rule's two forward
        products for x >= 0 (Bach et al. 2015), in one pass with the stacked weights [W; W+]:
        one im2col and one gemm per block (direct; bit-identical to the two calls in
        deterministic mode), or one input transform and 16 products of twice the rows per block
        (Winograd: 4-22% under two calls; equal to them to float32 rounding)."""
        return _core.conv_forward_pair(x, self.weights("wpos"), self.bias("wpos"), self.stride,
                                       self.pad, self.dilation, self.group,
                                       winograd=self._winograd("wpos", x.shape[0], False))

    def bwd(self, s, kind="w"):
        if kind == "ones":
            return self._bwd_ones(s)
        return _core.conv_backward_data(s, self.weights(kind), self.in_shape, self.stride,
                                        self.pad, self.dilation, self.group,
                                        winograd=self._winograd(kind, s.shape[0], True))

    def bwd_signal(self, R, kind="w", *, z=None, eps=0.0, times=None):
        """LinearOp.bwd_signal in one native call: the quotient and the product are computed
        inside the transposed convolution, block by block, never stored whole."""
        if kind == "ones":
            return super().bwd_signal(R, kind, z=z, eps=eps, times=times)
        args = (R, self.weights(kind), self.in_shape, self.stride, self.pad, self.dilation,
                self.group)
        fused = dict(z=z, eps=float(eps), times=times,
                     winograd=self._winograd(kind, R.shape[0], True))
        if times is None:
            return _core.conv_backward_data(*args, **fused)
        # the product with times also tests the result for NaN / inf, and adds an offered
        # relevance of the same blob (offer_sum), at no extra pass
        add = _take_sum(times.shape)
        dx, finite = _core.conv_backward_data(*args, **fused, check_finite=True, add=add)
        if add is not None:
            _sums.result = dx
        if finite:
            note_finite(dx)
        return dx

    def bwd_flat(self, R, x_shape):
        """LinearOp.bwd_flat summing first: n is the same for every output channel of a group
        (all-ones weights), so sum_o R_o / n = (sum_o R_o) / n -- one division per group and
        position instead of per channel; equal to float32 rounding."""
        N, g = R.shape[0], self.group
        n = self.fwd_count(x_shape, "ones")[:1]                  # (1, O, Ho, Wo)
        n_g = np.ascontiguousarray(n.reshape((1, g, -1) + n.shape[2:])[:, :, 0])  # (1, g, Ho, Wo)
        ssum = np.ascontiguousarray(R.reshape((N, g, -1) + R.shape[2:]).sum(axis=2))
        sig = _core.stabilized_divide(ssum, np.broadcast_to(n_g, ssum.shape), 0.0, True)
        return self._spread_groups(sig)

    def _bwd_ones(self, s):
        """bwd(s, "ones") without the all-ones product: every input channel of a group receives
        the same sum, so sum s over the group's output channels (N, group, Ho, Wo), spread it
        back through one (kh, kw) box per group, and repeat it over the group's channels.
        Costs O(N*O*Ho*Wo + N*group*H*W*kh*kw) instead of a gemm with C*kh*kw-long rows."""
        n, g = s.shape[0], self.group
        return self._spread_groups(np.ascontiguousarray(s.reshape((n, g, -1) + s.shape[2:])
                                                        .sum(axis=2)))

    def _spread_groups(self, ssum):
        """(N, group, Ho, Wo) per-group sums -> (N, C, H, W): each through one all-ones box,
        repeated over the group's channels."""
        g = self.group
        box = np.ones((g, 1) + self.w.shape[2:], dtype=np.float32)
        d = _core.conv_backward_data(ssum, box, (g,) + self.in_shape[1:], self.stride, self.pad,
                                     self.dilation, g)
        return np.repeat(d, self.in_shape[0] // g, axis=1)

    def pm_signal(self, R, z, zp, alpha, beta, guards=False):
        if guards:   # the toolbox's sign tests (host arrays: lrpfast.compat.ToolboxAlphaBeta)
            return _core.alphabeta_signal(R, z, zp, float(alpha), float(beta), self.group, True)
        return _kernels(R).alphabeta_signal(R, z, zp, float(alpha), float(beta), self.group)


class TransposedConvOp(LinearOp):
    """Transposed convolution (Caffe Deconvolution, ONNX ConvTranspose), x (N,C,H,W) ->
    (N,O,Ho,Wo); w (C, O/group, kh, kw). It is the transpose of the convolution with weights w
    from (O, Ho, Wo) to (C, H, W): ``fwd`` is that convolution's backward-data product (plus
    the bias), ``bwd`` its forward product, so every rule applies to it as to any linear map."""

    def __init__(self, w, b, in_shape, out_shape, stride, pad, dilation, group):
        super().__init__(w, b, in_shape)
        self.out_shape = tuple(int(d) for d in out_shape)
        self.stride, self.pad, self.dilation, self.group = stride, pad, dilation, group

    def fwd(self, x, kind="w", bias="b"):
        y = _core.conv_backward_data(np.ascontiguousarray(x), self.weights(kind), self.out_shape,
                                     self.stride, self.pad, self.dilation, self.group)
        b = self.bias(bias)
        return y if b is None else y + b.reshape((1, -1) + (1,) * (y.ndim - 2))

    def bwd(self, s, kind="w"):
        return _core.conv_forward(np.ascontiguousarray(s), self.weights(kind), None, self.stride,
                                  self.pad, self.dilation, self.group)


#: weight matrices from this size on derive W+ / W- (and the stacked [W+; W-]) block by block
#: at each use instead of keeping them: a kept copy would double or triple the memory of the
#: largest layers (CaffeNet's and VGG-16's fully connected layers, 64-392 MiB each)
SIGN_VARIANTS_KEPT_UP_TO = 32 << 20
#: bytes of one derived block (a few dozen rows; stays in cache while its product reads it)
SIGN_BLOCK_BYTES = 2 << 20


class InnerProductOp(LinearOp):
    """InnerProduct (Caffe ``axis``): the per-sample input (..., K) -> (..., O), with K the
    product of the axes from ``axis`` on; w (O, K). ``lead`` = axes kept before ``axis``.

    Large weights (``SIGN_VARIANTS_KEPT_UP_TO``) never keep W+ / W- / [W+; W-]: the products
    with them run over blocks of output rows, each block's variant derived just before its
    product (the forward: columns of y; the transposed product: partial sums added in block
    order, so a row's result still depends on that row alone)."""

    stacked_pm = True

    def __init__(self, w, b, in_shape, lead: int = 0):
        super().__init__(w, b, in_shape)
        self.lead_shape = self.in_shape[:lead]

    def _blocked(self, kind: str) -> bool:
        return kind in ("pos", "neg", "pm") and self.w.nbytes > SIGN_VARIANTS_KEPT_UP_TO

    def _row_blocks(self, per_row: int):
        O, K = self.w.shape
        step = max(8, SIGN_BLOCK_BYTES // (per_row * K * 4))
        return [(o, min(o + step, O)) for o in range(0, O, step)]

    def fwd(self, x, kind="w", bias="b"):
        x2 = x.reshape(-1, self.w.shape[1])
        if self._blocked(kind):
            b = self.bias(bias)
            y = np.empty((x2.shape[0], self.w.shape[0]), np.float32)
            for o0, o1 in self._row_blocks(1):
                y[:, o0:o1] = _core.linear_forward(x2, _core.weight_signs(self.w[o0:o1], kind),
                                                   None if b is None else b[o0:o1])
        else:
            w = self.weights(kind)
            y = _core.linear_forward(x2, w, self.bias(bias))
        return y.reshape((x.shape[0],) + self.lead_shape + (self.w.shape[0],))

    def _bwd_blocked(self, s2, kind):
        """bwd for the sign variants of large weights, block by block (see the class)."""
        O = self.w.shape[0]
        pm = kind == "pm"
        dx = None
        for o0, o1 in self._row_blocks(2 if pm else 1):
            wb = _core.weight_signs(self.w[o0:o1], kind)   # [W+; W-] rows of the block for "pm"
            sb = np.concatenate([s2[:, o0:o1], s2[:, O + o0:O + o1]], axis=1) if pm else \
                np.ascontiguousarray(s2[:, o0:o1])
            part = _core.linear_backward_data(sb, wb)
            dx = part if dx is None else np.add(dx, part, out=dx)
        return dx

    def bwd(self, s, kind="w"):
        if kind == "ones":  # every input receives the sum of s over the outputs
            tot = s.reshape(-1, self.w.shape[0]).sum(axis=1, keepdims=True)
            dx = np.broadcast_to(tot, (tot.shape[0], self.w.shape[1]))
            return np.ascontiguousarray(dx).reshape((s.shape[0],) + self.in_shape)
        if self._blocked(kind):
            rows = (2 if kind == "pm" else 1) * self.w.shape[0]
            dx = self._bwd_blocked(s.reshape(-1, rows), kind)
        else:
            w = self.weights(kind)
            dx = _core.linear_backward_data(s.reshape(-1, w.shape[0]), w)
        return dx.reshape((s.shape[0],) + self.in_shape)

    def pm_signal(self, R, z, zp, alpha, beta, guards=False):
        o = self.w.shape[0]
        args = (R.reshape(-1, o), z.reshape(-1, o), zp.reshape(-1, o), float(alpha), float(beta))
        s = _core.alphabeta_signal(*args, 1, True) if guards else \
            _kernels(R).alphabeta_signal(*args, 1)
        return s.reshape(tuple(R.shape[:-1]) + (2 * o,))


class DiagOp(LinearOp):
    """Per-channel affine map y = a_c x + c_c (an unfolded BatchNorm/Scale), x (N, C, ...);
    w = a (C,), b = c (C,). Both products are the ``channel_affine`` kernel."""

    def fwd(self, x, kind="w", bias="b"):
        return _kernels(x).channel_affine(x, self.weights(kind), self.bias(bias))

    def bwd(self, s, kind="w"):
        return _kernels(s).channel_affine(s, self.weights(kind), None)


class AvgPoolOp(LinearOp):
    """Average pooling as a linear map with weights 1/pool_size (Caffe's divisor); only the
    plain variant exists (lrpfast mode applies the z/eps rule to it)."""

    def __init__(self, in_shape, kernel, stride, pad, ceil_mode=True):
        super().__init__(np.ones(1, np.float32), None, in_shape)
        self.kernel, self.stride, self.pad, self.ceil_mode = kernel, stride, pad, ceil_mode

    def fwd(self, x, kind="w", bias=None):
        return _core.pool_forward(x, "ave", self.kernel, self.stride, self.pad, self.ceil_mode)[0]

    def bwd(self, s, kind="w"):
        return _core.pool_backward(s, self.in_shape, "ave", self.kernel, self.stride, self.pad,
                                   _EMPTY_I32)


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
