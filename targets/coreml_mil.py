"""A reference evaluator for Core ML ML Programs (MIL), in numpy.

Core ML cannot run predictions on Linux, so this module re-reads a saved ``.mlpackage`` with
coremltools' own milproto loader and evaluates the program's ops one by one in numpy. It is a
*reference evaluation of the MIL program*, not Core ML runtime numerics: the runtime picks its own
kernels, accumulation order and device (CPU, GPU, Neural Engine), so on-device outputs differ in
the last bits, and more so in fp16.

Numerics: every op computes in float32 (float64 inside ``erf``) and its result is cast to the
op's *declared* output dtype. In a program converted with ``compute_precision=FLOAT16`` each op
output is therefore rounded to float16, i.e. this models ideal fp16 storage with fp32
accumulation. Compressed weights (``constexpr_*`` ops) are decompressed once, at load time.

Speed, without changing what is computed: a batch goes through a program fixed at batch 1 in
one pass when every op keeps items apart (checked op by op at load; matrix products still run
per item, so an item's result is bit for bit its batch-1 result); convolutions run
channels-last (pointwise ones as one BLAS matmul, depthwise ones tap by tap over cache-sized
blocks); an expensive elementwise op on float16 or int8 values (GELU, sigmoid, quantize, ...) is
a lookup table of its own results for every value the input can hold; and float16 rounding is
done in float32 arithmetic, bit for bit numpy's cast without its slow software path.

Image inputs (``ct.ImageType``) take ``uint8 (H, W, 3)`` or ``(N, H, W, 3)`` RGB pixels, like the
pixel buffer an app hands Core ML. In an ML Program the image ``scale``/``bias`` preprocessing is
not stored in the model description: coremltools bakes it into the program as ``mul``/``add`` ops
on the image input, so evaluating the program applies it. The evaluator only reorders channels
(RGB -> BGR for ``BGR`` models) and lays the pixels out as float ``(N, C, H, W)``.

Classifier models (``ct.ClassifierConfig``) end in a ``classify`` op. Their outputs are returned
per batch item: the label output as a ``(N,)`` array of labels and the probabilities output as a
``(N,)`` object array of ``{label: float}`` dicts. The tensor that feeds ``classify`` (the
``(N, classes)`` logits or probabilities) is returned too, under the key
:attr:`MilEvaluator.probabilities_name`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_convnext.errors import ArtifactError, choices

NOTE = "reference evaluation of the MIL program in numpy, not Core ML runtime numerics"
# float32 elements per block of the blockwise loops (depthwise conv, float64 GELU, fp16 rounding):
# a block and its operands stay in the L2 cache.
_CHUNK = 1 << 15

_OPS: dict[str, Callable[..., Any]] = {}
_CONSTEXPR: dict[str, Callable[..., Any]] = {}


def _register(table: dict[str, Callable[..., Any]], *names: str) -> Callable:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            table[name] = fn
        return fn

    return register


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def _axes(value: Any, rank: int) -> tuple[int, ...]:
    """Normalize an ``axes`` parameter (None means every axis) to sorted non-negative ints."""
    if value is None:
        return tuple(range(rank))
    return tuple(sorted(a % rank for a in _ints(value)))


# ---------------------------------------------------------------------------------------------
# Large arrays come from the running evaluator's arena: numpy hands a big array's memory back to
# the OS when it is freed, and every page of a fresh one then costs a fault and zeroing (a fifth
# of a ConvNeXt-T batch's time). The arena keeps buffers between ops and calls instead.
class _Arena:
    """Buffers of at least :attr:`MIN_BYTES`, recycled by exact size.

    A buffer is *lent* (handed out, maybe shared by views) until :meth:`recycle` puts it back;
    the arena keeps a reference to each, so their ids stay unique.
    """

    MIN_BYTES = 1 << 20

    def __init__(self) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._lent: dict[int, np.ndarray] = {}

    def empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < self.MIN_BYTES:
            return np.empty(shape, dtype=dtype)
        free = self._free.get(size)
        buffer = free.pop() if free else np.empty(size, dtype=np.uint8)
        self._lent[id(buffer)] = buffer
        return buffer.view(dtype).reshape(shape)

    def root(self, array: Any) -> np.ndarray | None:
        """The lent buffer ``array`` lives in (numpy points a view's base at the owner)."""
        if not isinstance(array, np.ndarray):
            return None
        owner = array if array.base is None else array.base
        return owner if self._lent.get(id(owner)) is owner else None

    def recycle(self, array: np.ndarray) -> None:
        """Take back the buffer ``array`` lives in: nothing may use it any more."""
        buffer = self.root(array)
        if buffer is not None:
            del self._lent[id(buffer)]
            self._free.setdefault(buffer.nbytes, []).append(buffer)

    def forget_lent(self) -> None:
        """Let go of buffers still lent (kept by the caller, or temporaries not given back)."""
        self._lent.clear()

    def clear(self) -> None:
        self._free.clear()
        self._lent.clear()


_LOCAL = threading.local()  # .arena: the arena of the evaluator running in this thread


def _empty(shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    arena = getattr(_LOCAL, "arena", None)
    return arena.empty(shape, dtype) if arena is not None else np.empty(shape, dtype=dtype)


def _empty_like(x: np.ndarray, dtype: Any = None) -> np.ndarray:
    """Like ``np.empty_like``: the same memory order as ``x`` (channels-last stays so)."""
    dtype = x.dtype if dtype is None else dtype
    if x.ndim <= 1 or x.flags.c_contiguous:
        return _empty(x.shape, dtype)
    order = sorted(range(x.ndim), key=lambda axis: -x.strides[axis])  # outermost first
    buffer = _empty([x.shape[axis] for axis in order], dtype)
    return buffer.transpose(np.argsort(order))


def _recycle(array: np.ndarray) -> None:
    """Give an op's own temporary back to the arena (never an array an output may view)."""
    arena = getattr(_LOCAL, "arena", None)
    if arena is not None:
        arena.recycle(array)


# ---------------------------------------------------------------------------------------------
# erf, after Cephes (S. L. Moshier, public domain), in float64: numpy has no erf and scipy is not
# a dependency of the coreml extra.
_ERF_T = (
    9.60497373987051638749e0,
    9.00260197203842689217e1,
    2.23200534594684319226e3,
    7.00332514112805075473e3,
    5.55923013010394962768e4,
)
_ERF_U = (
    1.0,
    3.35617141647503099647e1,
    5.21357949780152679795e2,
    4.59432382970980127987e3,
    2.26290000613890934246e4,
    4.92673942608635921086e4,
)
_ERFC_P = (
    2.46196981473530512524e-10,
    5.64189564831068821977e-1,
    7.46321056442269912687e0,
    4.86371970985681366614e1,
    1.96520832956077098242e2,
    5.26445194995477358631e2,
    9.34528527171957607540e2,
    1.02755188689515710272e3,
    5.57535335369399327526e2,
)
_ERFC_Q = (
    1.0,
    1.32281951154744992508e1,
    8.67072140885989742329e1,
    3.54937778887819891062e2,
    9.75708501743205489753e2,
    1.82390916687909736289e3,
    2.24633760818710981792e3,
    1.65666309194161350182e3,
    5.57535340817727675546e2,
)
_ERFC_R = (
    5.64189583547755073984e-1,
    1.27536670759978104416e0,
    5.01905042251180477414e0,
    6.16021097993053585195e0,
    7.40974269950448939160e0,
    2.97886665372100240670e0,
)
_ERFC_S = (
    1.0,
    2.26052863220117276590e0,
    9.39603524938001434673e0,
    1.20489539808096656605e1,
    1.70814450747565897222e1,
    9.60896809063285878198e0,
    3.36907645100081516050e0,
)


def _rational(x: np.ndarray, num: Sequence[float], den: Sequence[float]) -> np.ndarray:
    """``num(x) / den(x)`` by Horner's rule, in place to spare temporaries."""
    p = np.full_like(x, num[0])
    for c in num[1:]:
        p *= x
        p += c
    q = np.full_like(x, den[0])
    for c in den[1:]:
        q *= x
        q += c
    p /= q
    return p


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf for |x| <= 1."""
    return x * _rational(x * x, _ERF_T, _ERF_U)


def _erfc_large(x: np.ndarray) -> np.ndarray:
    """erfc for |x| >= 1, with relative accuracy in the tail."""
    ax = np.abs(x)
    y = np.empty_like(ax)
    mid = ax < 8.0
    y[mid] = _rational(ax[mid], _ERFC_P, _ERFC_Q)
    y[~mid] = _rational(ax[~mid], _ERFC_R, _ERFC_S)
    y *= np.exp(-ax * ax)
    return np.where(x < 0, 2.0 - y, y)


def _erf_parts(x: Any, complement: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = np.abs(x) < 1.0
    inner = _erf_small(x[small])
    outer = _erfc_large(x[~small])
    out[small] = 1.0 - inner if complement else inner
    out[~small] = outer if complement else 1.0 - outer
    return out


def erf(x: Any) -> np.ndarray:
    """The error function in float64 (Cephes' rational approximations, ~1e-16 relative)."""
    return _erf_parts(x, complement=False)


def erfc(x: Any) -> np.ndarray:
    """The complementary error function in float64, accurate in the tails too."""
    return _erf_parts(x, complement=True)


# ---------------------------------------------------------------------------------------------
# Elementwise ops.
def _binary(ufunc: np.ufunc) -> Callable[..., np.ndarray]:
    def op(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ufunc(x, y, out=_float32_out(x, y)) if ufunc in _ARITHMETIC else ufunc(x, y)

    return op


def _float32_out(x: Any, y: Any) -> np.ndarray | None:
    """An arena array for a float32 ``x op y``, in the memory order of the operand its shape
    is; ``None`` (numpy allocates) for other dtypes."""
    operands = [np.asarray(v) for v in (x, y)]
    if any(v.dtype != np.float32 for v in operands):
        return None
    shape = np.broadcast_shapes(*(v.shape for v in operands))
    like = next((v for v in operands if v.shape == shape), None)
    return _empty_like(like) if like is not None else _empty(shape)


_ARITHMETIC = {np.add, np.subtract, np.multiply, np.true_divide, np.maximum, np.minimum}


for _name, _ufunc in {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}.items():
    _OPS[_name] = _binary(_ufunc)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def op(x: np.ndarray) -> np.ndarray:
        return fn(x)

    return op


for _name, _fn in {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,
    "sign": np.sign,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "exp2": np.exp2,
    "tanh": np.tanh,
    "sin": np.sin,
    "cos": np.cos,
    "square": np.square,
    "logical_not": np.logical_not,
    "erf": erf,
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "softplus": lambda x: np.logaddexp(x, 0),
}.items():
    _OPS[_name] = _unary(_fn)


@_register(_OPS, "rsqrt")
def _rsqrt(x: np.ndarray, epsilon: float) -> np.ndarray:
    return 1.0 / np.sqrt(x + np.float32(epsilon))


@_register(_OPS, "inverse")
def _inverse(x: np.ndarray, epsilon: float) -> np.ndarray:
    return 1.0 / (x + np.float32(epsilon))


@_register(_OPS, "log")
def _log(x: np.ndarray, epsilon: float) -> np.ndarray:
    return np.log(x + np.float32(epsilon))


@_register(_OPS, "clip")
def _clip(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(x, alpha, beta)


@_register(_OPS, "leaky_relu")
def _leaky_relu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x >= 0, x, x * np.float32(alpha))


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    x64 = np.asarray(x, dtype=np.float64)
    # the erfc form keeps relative accuracy for large negative x
    return 0.5 * x64 * erfc(x64 * -math.sqrt(0.5))


def _blockwise(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``fn`` (elementwise, float64 inside) on cache-sized blocks of ``x``, as float32."""
    flat = np.asarray(x).reshape(-1)
    out = _empty(flat.shape)
    for start in range(0, flat.size, _CHUNK):
        out[start : start + _CHUNK] = fn(flat[start : start + _CHUNK])
    return out.reshape(np.shape(x))


@_register(_OPS, "gelu")
def _gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    if mode == "EXACT":
        return _blockwise(_gelu_exact, x)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise ArtifactError(f"gelu mode {mode!r} is not supported")


@_register(_OPS, "softmax")
def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


@_register(_OPS, "cast")
def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    out = _empty_like(np.asarray(x))  # a copy: the declared output dtype does the cast
    np.copyto(out, x)
    return out


# ---------------------------------------------------------------------------------------------
# Linear algebra and normalization.
def _matmul_2d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for a 2-D ``w``: for ``x`` of rank 3 or more, one BLAS call per item of its
    leading axis, shaped as a batch-1 program shapes it, so that no item's result depends on the
    others in its batch (a BLAS may pick its kernel, hence its rounding, by size)."""
    if x.ndim <= 2:
        return np.ascontiguousarray(x) @ w
    out = _empty((*x.shape[:-1], w.shape[-1]), np.result_type(x, w))
    for item, result in zip(x, out, strict=True):
        rows = np.ascontiguousarray(item).reshape(-1, x.shape[-1])
        np.matmul(rows, w, out=result.reshape(-1, w.shape[-1]))
    return out


@_register(_OPS, "linear")
def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    y = _matmul_2d(x, weight.T) if x.ndim > 1 else weight @ x
    if bias is not None:
        y += bias
    return y


@_register(_OPS, "matmul")
def _matmul(
    x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False
) -> np.ndarray:
    if transpose_x and x.ndim > 1:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim > 1:
        y = np.swapaxes(y, -1, -2)
    if y.ndim == 2 and x.ndim > 1:
        return _matmul_2d(x, y)
    return np.matmul(np.ascontiguousarray(x), np.ascontiguousarray(y))


@_register(_OPS, "layer_norm")
def _layer_norm(
    x: np.ndarray,
    axes: Any = None,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    epsilon: float = 1e-5,
) -> np.ndarray:
    axes = _axes(axes, x.ndim)
    y = np.subtract(x, x.mean(axis=axes, keepdims=True), out=_empty_like(x))
    squares = np.square(y, out=_empty_like(y))
    var = np.mean(squares, axis=axes, keepdims=True)
    _recycle(squares)
    var += np.float32(epsilon)
    y /= np.sqrt(var, out=var)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if gamma is not None:
        y *= np.reshape(gamma, shape)
    if beta is not None:
        y += np.reshape(beta, shape)
    return y


@_register(_OPS, "batch_norm")
def _batch_norm(
    x: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    epsilon: float = 1e-5,
) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + np.float32(epsilon))
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def op(x: np.ndarray, axes: Any = None, keep_dims: bool = False) -> np.ndarray:
        return fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))

    return op


for _name, _fn in {
    "reduce_mean": np.mean,
    "reduce_sum": np.sum,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, **kw: np.sum(np.abs(x), **kw),
    "reduce_l2_norm": lambda x, **kw: np.sqrt(np.sum(x * x, **kw)),
    "reduce_sum_square": lambda x, **kw: np.sum(x * x, **kw),
    "reduce_log_sum_exp": lambda x, **kw: np.log(np.sum(np.exp(x), **kw)),
}.items():
    _OPS[_name] = _reduce(_fn)


# ---------------------------------------------------------------------------------------------
# Convolution, computed channels-last: ``(N, *spatial, C)`` memory, so that pointwise convs are
# one BLAS matmul and the depthwise inner loop runs over contiguous channels. The result is
# returned as the ``(N, C, *spatial)`` view MIL expects; ConvNeXt's transposes to channels-last
# that follow a conv then cost nothing.


def _conv_pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pad_type: str,
    pad: Sequence[int],
) -> list[tuple[int, int]]:
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type not in ("same", "same_lower"):
        raise ArtifactError(f"conv pad_type {pad_type!r} is not supported")
    pads = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


@dataclasses.dataclass(frozen=True)
class _ConvGeometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    out: tuple[int, ...]

    def taps(self) -> list[tuple[int, ...]]:
        """Kernel taps in the order of the flattened kernel (``weight.reshape(c_out, -1)``)."""
        return list(itertools.product(*(range(k) for k in self.kernel)))

    def window(self, tap: Sequence[int], rows: tuple[int, int] | None = None) -> tuple[slice, ...]:
        """The strided window of the padded input that ``tap`` multiplies, for output rows
        ``rows`` (a range of the first spatial axis; all rows by default)."""
        first, last = rows or (0, self.out[0])
        bounds = [(first, last)] + [(0, o) for o in self.out[1:]]
        return tuple(
            slice(t * d + b * s, t * d + (e - 1) * s + 1, s)
            for t, d, s, (b, e) in zip(tap, self.dilations, self.strides, bounds, strict=True)
        )


def _channels_last(x: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(N, C, *spatial)`` -> zero-padded ``(N, *padded, C)``, C-contiguous; a view of ``x``
    itself where its memory already is that."""
    moved = np.moveaxis(x, 1, -1)
    if not any(b or e for b, e in pads) and moved.flags.c_contiguous:
        return moved
    n, c = x.shape[:2]
    out = _empty((n, *(s + b + e for s, (b, e) in zip(x.shape[2:], pads, strict=True)), c), x.dtype)
    inner = []
    for axis, (size, (before, after)) in enumerate(zip(x.shape[2:], pads, strict=True), 1):
        edge = (slice(None),) * axis
        out[(*edge, slice(0, before))] = 0
        out[(*edge, slice(before + size, before + size + after))] = 0
        inner.append(slice(before, before + size))
    out[(slice(None), *inner)] = moved
    return out


def _depthwise(xp: np.ndarray, weight: np.ndarray, geometry: _ConvGeometry) -> np.ndarray:
    """One multiply-accumulate per tap, block by block (images x output rows) so each block's
    working set stays in cache. Taps are summed in kernel order, as a reference loop would."""
    n, c = xp.shape[0], weight.shape[0]
    if xp.shape[-1] != c:  # channel multiplier: output channel k reads input channel k // m
        xp = np.repeat(xp, c // xp.shape[-1], axis=-1)
    taps = geometry.taps()
    w = np.ascontiguousarray(weight.reshape(c, len(taps)).T)  # (taps, c)
    # With stride 1 along the last spatial axis, a window's (width, channels) are one run of
    # memory: fold them into one axis (weights tiled to match) so numpy's loops run long.
    fold = len(geometry.out) >= 2 and geometry.strides[-1] == 1
    if fold:
        w = np.tile(w, (1, geometry.out[-1]))
    out = _empty((n, *geometry.out, c), np.result_type(xp, weight))
    rows_total = geometry.out[0]
    rows = max(1, _CHUNK // (math.prod(geometry.out[1:]) * c))
    images = max(1, rows // rows_total)
    rows = min(rows, rows_total)
    scratch = np.empty((images, rows, *geometry.out[1:], c), dtype=out.dtype)
    for n0 in range(0, n, images):
        n1 = min(n, n0 + images)
        for r0 in range(0, rows_total, rows):
            r1 = min(rows_total, r0 + rows)
            block = _folded(out[n0:n1, r0:r1], fold)
            product = _folded(scratch[: n1 - n0, : r1 - r0], fold)
            for k, tap in enumerate(taps):
                window = _folded(xp[(slice(n0, n1), *geometry.window(tap, (r0, r1)))], fold)
                np.multiply(window, w[k], out=block if k == 0 else product)
                if k:
                    block += product
    return out


def _folded(array: np.ndarray, fold: bool) -> np.ndarray:
    """``array`` with its last two axes as one (a view where their memory is one run)."""
    return array.reshape(*array.shape[:-2], -1) if fold else array


def _im2col(xp: np.ndarray, geometry: _ConvGeometry) -> np.ndarray:
    """``(N, *padded, C)`` -> ``(N, *out, C, taps)`` patches."""
    taps = geometry.taps()
    cols = _empty((xp.shape[0], *geometry.out, xp.shape[-1], len(taps)), xp.dtype)
    for k, tap in enumerate(taps):
        cols[..., k] = xp[(slice(None), *geometry.window(tap))]
    return cols


def _grouped(xp: np.ndarray, weight: np.ndarray, groups: int, geometry: _ConvGeometry):
    """im2col, then one BLAS matmul per group over every image and pixel at once."""
    c_out, c_in_g = weight.shape[:2]
    pointwise = all(k == 1 for k in geometry.kernel) and all(s == 1 for s in geometry.strides)
    patches = xp if pointwise else _im2col(xp, geometry)  # a pointwise conv's input is its own
    cols = patches.reshape(*patches.shape[: 1 + len(geometry.out)], groups, -1)
    wg = weight.reshape(groups, c_out // groups, -1)  # cols: (..., groups, c_in_g * taps)
    parts = [_matmul_2d(cols[..., g, :], wg[g].T) for g in range(groups)]
    if not pointwise:
        _recycle(patches)
    return parts[0] if groups == 1 else np.concatenate(parts, axis=-1)


@_register(_OPS, "conv")
def _conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Any = None,
    pad_type: str = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: int = 1,
) -> np.ndarray:
    spatial, kernel = x.shape[2:], weight.shape[2:]
    rank = len(spatial)
    strides = _ints(strides) if strides is not None else (1,) * rank
    dilations = _ints(dilations) if dilations is not None else (1,) * rank
    pad = _ints(pad) if pad is not None else (0,) * (2 * rank)
    pads = _conv_pads(spatial, kernel, strides, dilations, str(pad_type), pad)
    out_sizes = tuple(
        (size + b + e - (k - 1) * d - 1) // s + 1
        for size, (b, e), k, s, d in zip(spatial, pads, kernel, strides, dilations, strict=True)
    )
    geometry = _ConvGeometry(tuple(kernel), strides, dilations, out_sizes)
    xp = _channels_last(x, pads)
    if int(groups) == x.shape[1] and weight.shape[1] == 1:
        out = _depthwise(xp, weight, geometry)
    else:
        out = _grouped(xp, weight, int(groups), geometry)
    if not np.may_share_memory(xp, x):
        _recycle(xp)
    if bias is not None:
        out += bias
    return np.moveaxis(out, -1, 1)


# ---------------------------------------------------------------------------------------------
# Shape ops.
@_register(_OPS, "transpose")
def _transpose(x: np.ndarray, perm: Any) -> np.ndarray:
    return np.transpose(x, _ints(perm))


@_register(_OPS, "reshape")
def _reshape(x: np.ndarray, shape: Any) -> np.ndarray:
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(_ints(shape))]
    return np.reshape(x, dims)


@_register(_OPS, "squeeze")
def _squeeze(x: np.ndarray, axes: Any = None) -> np.ndarray:
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=_ints(axes))


@_register(_OPS, "expand_dims")
def _expand_dims(x: np.ndarray, axes: Any) -> np.ndarray:
    return np.expand_dims(x, axis=_ints(axes))


@_register(_OPS, "concat")
def _concat(values: Sequence[np.ndarray], axis: int, interleave: bool = False) -> np.ndarray:
    axis = int(axis) % np.ndim(values[0])
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


@_register(_OPS, "slice_by_index")
def _slice_by_index(
    x: np.ndarray,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> np.ndarray:
    rank = x.ndim
    stride = _ints(stride) if stride is not None else (1,) * rank
    begin_mask = np.asarray(begin_mask if begin_mask is not None else [False] * rank)
    end_mask = np.asarray(end_mask if end_mask is not None else [False] * rank)
    squeeze_mask = np.asarray(squeeze_mask if squeeze_mask is not None else [False] * rank)
    index: list[Any] = []
    for i, (b, e, s) in enumerate(zip(_ints(begin), _ints(end), stride, strict=True)):
        if squeeze_mask[i]:
            index.append(b)
        else:
            index.append(slice(None if begin_mask[i] else b, None if end_mask[i] else e, s))
    return x[tuple(index)]


@_register(_OPS, "slice_by_size")
def _slice_by_size(x: np.ndarray, begin: Any, size: Any) -> np.ndarray:
    index = tuple(
        slice(b, None if s == -1 else b + s) for b, s in zip(_ints(begin), _ints(size), strict=True)
    )
    return x[index]


# ---------------------------------------------------------------------------------------------
# Quantization and classification.
def _along_axis(param: np.ndarray, rank: int, axis: Any) -> np.ndarray:
    """Broadcast a scalar or per-axis vector quantization parameter to a rank-``rank`` tensor."""
    param = np.asarray(param, dtype=np.float32)
    if param.ndim == 0 or param.ndim == rank:
        return param
    shape = [1] * rank
    shape[int(axis) % rank] = -1
    return param.reshape(shape)


@_register(_OPS, "quantize")
def _quantize(
    input: np.ndarray,
    scale: np.ndarray,
    output_dtype: str,
    zero_point: np.ndarray | None = None,
    axis: int | None = None,
) -> np.ndarray:
    info = np.iinfo(np.int8 if output_dtype == "int8" else np.uint8)
    q = np.round(input / _along_axis(scale, input.ndim, axis))
    if zero_point is not None:
        q = q + _along_axis(zero_point, input.ndim, axis)
    return np.clip(q, info.min, info.max)


@_register(_OPS, "dequantize")
def _dequantize(
    input: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    axis: int | None = None,
) -> np.ndarray:
    x = input.astype(np.float32)
    if zero_point is not None:
        x = x - _along_axis(zero_point, input.ndim, axis)
    return x * _along_axis(scale, input.ndim, axis)


@_register(_OPS, "classify")
def _classify(probabilities: np.ndarray, classes: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float32).reshape(-1, len(classes))
    labels = np.array([classes[i] for i in probs.argmax(axis=1)], dtype=object)
    dicts = np.empty(len(probs), dtype=object)
    for i, row in enumerate(probs):
        dicts[i] = {label: float(p) for label, p in zip(classes, row, strict=True)}
    return labels, dicts


# ---------------------------------------------------------------------------------------------
# Compressed weights (constexpr ops), decompressed once at load time.
def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """iOS16 packing: LSB-first bit fields over little-endian bytes."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")
    bits = bits[: nbits * count].reshape(count, nbits).astype(np.int64)
    return bits @ (1 << np.arange(nbits))


@_register(_CONSTEXPR, "constexpr_affine_dequantize")
def _affine_dequantize(
    quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, axis: int
) -> np.ndarray:
    rank = quantized_data.ndim
    q = quantized_data.astype(np.float32) - _along_axis(zero_point, rank, axis)
    return q * _along_axis(scale, rank, axis)


@_register(_CONSTEXPR, "constexpr_cast")
def _constexpr_cast(source_val: np.ndarray, output_dtype: str) -> np.ndarray:
    return source_val


def _repeat_blocks(param: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Repeat a per-block parameter along each axis so it covers a tensor of ``shape``."""
    for axis, (size, blocks) in enumerate(zip(shape, param.shape, strict=True)):
        if size != blocks:
            param = np.repeat(param, size // blocks, axis=axis)
    return param


@_register(_CONSTEXPR, "constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(
    data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray:
    x = data.astype(np.float32)
    if offset is not None:
        x = x - _repeat_blocks(offset.astype(np.float32), data.shape)
    return x * _repeat_blocks(scale.astype(np.float32), data.shape)


def _lut_dense(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None) -> np.ndarray:
    """iOS18 LUT: ``lut`` is (*groups, palettes, vector); groups tile ``indices`` block-wise."""
    rank = indices.ndim
    group_index = tuple(
        (np.arange(size) // (size // groups)).reshape([-1 if i == a else 1 for i in range(rank)])
        for a, (size, groups) in enumerate(zip(indices.shape, lut.shape[:-2], strict=True))
    )
    out = lut[(*group_index, indices.astype(np.int64))]  # (*indices.shape, vector)
    if lut.shape[-1] == 1:
        return out[..., 0]
    axis = int(vector_axis) % indices.ndim
    out = np.moveaxis(out, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= lut.shape[-1]
    return out.reshape(shape)


@_register(_CONSTEXPR, "constexpr_lut_to_dense")
def _lut_to_dense(
    indices: np.ndarray,
    lut: np.ndarray,
    shape: np.ndarray | None = None,
    vector_axis: int | None = None,
) -> np.ndarray:
    if shape is not None:  # iOS16: packed bytes, one flat table
        count = math.prod(_ints(shape))
        flat = _unpack_bits(indices, int(np.log2(lut.size)), count)
        return lut[flat].reshape(_ints(shape))
    return _lut_dense(indices, lut, vector_axis)


@_register(_CONSTEXPR, "constexpr_sparse_to_dense")
def _sparse_to_dense(
    nonzero_data: np.ndarray, mask: np.ndarray, shape: np.ndarray | None = None
) -> np.ndarray:
    if shape is not None:  # iOS16: packed bit mask
        count = math.prod(_ints(shape))
        mask = _unpack_bits(mask, 1, count).reshape(_ints(shape))
    dense = np.zeros(mask.shape, dtype=nonzero_data.dtype)
    dense[mask != 0] = nonzero_data
    return dense


@_register(_CONSTEXPR, "constexpr_lut_to_sparse")
def _lut_to_sparse(
    indices_mask: np.ndarray,
    indices_nonzero_data: np.ndarray,
    lut: np.ndarray,
    vector_axis: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    dense = _lut_dense(_sparse_to_dense(indices_nonzero_data, indices_mask), lut, vector_axis)
    mask = indices_mask
    if lut.shape[-1] > 1:
        mask = np.repeat(mask, lut.shape[-1], axis=int(vector_axis))
    return mask, dense[mask != 0]


@_register(_CONSTEXPR, "constexpr_sparse_blockwise_shift_scale")
def _sparse_blockwise_shift_scale(
    data_mask: np.ndarray,
    nonzero_data: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    dense = _blockwise_shift_scale(_sparse_to_dense(nonzero_data, data_mask), scale, offset)
    return data_mask, dense[data_mask != 0]


SUPPORTED_OPS = frozenset({"const", *_OPS, *_CONSTEXPR})


# ---------------------------------------------------------------------------------------------
# The program, compiled to a flat list of steps.
@dataclasses.dataclass(frozen=True)
class _Step:
    op_type: str
    fn: Callable[..., Any]
    args: dict[str, str | tuple[str, ...]]  # MIL parameter -> var name(s)
    defaults: dict[str, Any]
    outputs: tuple[str, ...]
    dtypes: tuple[np.dtype | None, ...]
    frees: tuple[str, ...]  # vars dead after this step


@dataclasses.dataclass(frozen=True)
class _Input:
    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    color_space: str | None  # "RGB", "BGR", "GRAYSCALE", ... for image inputs


def _store(value: Any, dtype: np.dtype | None, fresh: bool = False) -> Any:
    """Round a computed value to its declared dtype; float16 values are kept as float32.

    ``fresh``: ``value`` is an op's own new array, which nothing else holds, so float16 rounding
    may overwrite it.
    """
    if dtype is None:
        return value
    if dtype == np.float16:
        return _round_to_fp16(value, fresh)
    return np.asarray(value).astype(dtype, copy=False)


def _round_to_fp16(value: Any, fresh: bool) -> np.ndarray:
    """The nearest float16 of each value (ties to even, overflow to inf), as float32.

    Bit for bit ``value.astype(float16).astype(float32)``, without numpy's float16 casts, which
    take a software path (several ns per value, ~100 ns for an fp16 subnormal: ConvNeXt's layer
    scale makes many). Rounds ``value`` itself when ``fresh``, else a copy.
    """
    array = np.asarray(value)
    flat = array.ravel(order="K") if fresh and array.dtype == np.float32 else None
    if flat is None or not array.flags.writeable or not np.may_share_memory(flat, array):
        array = np.array(array, dtype=np.float32, order="K")
        flat = array.ravel(order="K")
    scratch = np.empty((2, min(flat.size, _CHUNK)), dtype=np.uint32)
    with np.errstate(invalid="ignore"):  # signalling NaNs stay NaN
        for start in range(0, flat.size, _CHUNK):
            block = flat[start : start + _CHUNK]
            _round_block_to_fp16(block, *scratch[:, : block.size])
    return array


_EXPONENT = np.uint32(0x7F800000)
_SIGN = np.uint32(0x80000000)
# Exponent bits of fp16's smallest normal (subnormals share its spacing) and of its largest.
_FP16_MIN_EXPONENT = np.uint32((127 - 14) << 23)
_FP16_MAX_EXPONENT = np.uint32((127 + 15) << 23)
# x in [2^e, 2^(e+1)) has fp16 spacing 2^(e-10); C = 1.5 * 2^(e+13) has float32 spacing 2^(e-10)
# and an even last bit, so (x + C) - C is x rounded to fp16 spacing, ties to even, exactly.
_TO_C = np.uint32((13 << 23) | 0x00400000)
_FP16_MAX = np.float32(65504.0)


def _round_block_to_fp16(x: np.ndarray, c: np.ndarray, sign: np.ndarray) -> None:
    """Round the float32 block ``x`` in place; ``c`` and ``sign`` are uint32 scratch."""
    bits = x.view(np.uint32)
    np.bitwise_and(bits, _EXPONENT, out=c)
    large = c.max() >= _FP16_MAX_EXPONENT  # some |x| >= 2**15 (or inf, NaN): may overflow
    np.clip(c, _FP16_MIN_EXPONENT, _FP16_MAX_EXPONENT, out=c)
    c += _TO_C
    np.bitwise_and(bits, _SIGN, out=sign)
    x += c.view(np.float32)
    x -= c.view(np.float32)
    bits |= sign  # a value that rounds to zero keeps its sign
    if large:
        overflow = np.abs(x) > _FP16_MAX
        x[overflow] = np.copysign(np.inf, x[overflow])


def _np_dtype(var: Any) -> np.dtype | None:
    from coremltools.converters.mil.mil import types

    try:
        dtype = np.dtype(types.nptype_from_builtin(var.dtype))
    except (TypeError, KeyError, AttributeError):
        return None
    return dtype if dtype.kind in "biuf" else None


def _const_value(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)  # exact; ops compute in float32
    return value


class MilEvaluator:
    """Evaluates the main function of a Core ML ML Program in numpy.

    Build it once with :meth:`from_mlpackage`, then call it many times with the model inputs as
    keyword arguments.

    Attributes:
        input_names: The program's inputs, in order.
        output_names: The program's outputs (the model description's outputs), in order.
        op_types: Every op type in the program, ``const`` and ``constexpr_*`` included.
        probabilities_name: For classifier models, the name of the tensor that feeds ``classify``
            (also a key of every result); ``None`` otherwise.
        batched: For a program fixed at batch 1 (as exported for apps), whether every op carries
            a leading batch axis through unchanged (checked at load, op by op): a batch of N
            inputs is then evaluated in one pass, else item by item.
        output_shapes: The declared shape of each output tensor (and of the tensor feeding
            ``classify``), a dimension left open as ``None``.
        description: The model description (``Model_pb2.ModelDescription``): feature types,
            classifier outputs, metadata.
    """

    def __init__(
        self,
        steps: list[_Step],
        consts: dict[str, Any],
        inputs: list[_Input],
        outputs: list[tuple[str, np.dtype | None]],
        op_types: set[str],
        probabilities_name: str | None,
        batched: bool = False,
    ):
        self._steps = steps
        self._consts = consts
        self._inputs = inputs
        self._outputs = outputs
        self.input_names = [i.name for i in inputs]
        self.output_names = [name for name, _ in outputs]
        self.op_types = op_types
        self.probabilities_name = probabilities_name
        self.batched = batched
        self.output_shapes: dict[str, tuple[int | None, ...]] = {}
        self.description: Any = None
        self._arena = _Arena()
        self._arena_batch: int | None = None  # the batch size its buffers were sized for
        self._lock = threading.Lock()  # one call at a time: the arena is this evaluator's

    @classmethod
    def from_mlpackage(cls, path: str | Path) -> MilEvaluator:
        """Parse a saved ``.mlpackage`` (an ML Program) once.

        Raises:
            ArtifactError: The model is not an ML Program, or uses an op this evaluator lacks.
        """
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load

        try:
            model = ct.models.MLModel(str(path), skip_model_load=True)
            spec = model.get_spec()
            if spec.WhichOneof("Type") != "mlProgram":
                raise ArtifactError(
                    f"{path} is a {spec.WhichOneof('Type')!r} model; only ML Programs can be "
                    "evaluated"
                )
            program = load(spec, spec.specificationVersion, model.weights_dir)
        except (OSError, RuntimeError, ValueError) as error:  # a damaged package or weight file
            raise ArtifactError(f"{path}: coremltools cannot read the package ({error})") from None
        function_name = spec.description.defaultFunctionName or "main"
        evaluator = cls._compile(program.functions[function_name], spec)
        evaluator.description = spec.description
        return evaluator

    @classmethod
    def _compile(cls, function: Any, spec: Any) -> MilEvaluator:
        consts: dict[str, Any] = {}
        ops: list[Any] = []
        op_types: set[str] = set()
        probabilities_name = None
        for op in function.operations:
            op_types.add(op.op_type)
            if op.op_type == "const":
                consts[op.outputs[0].name] = _const_value(op.outputs[0].val)
            elif op.op_type in _CONSTEXPR:
                _fold_constexpr(op, consts)
            else:
                ops.append(op)
                if op.op_type == "classify":
                    probabilities_name = op.inputs["probabilities"].name
        steps = [_make_step(op) for op in ops]
        inputs = _describe_inputs(function, spec)
        batched = _fixed_batch_one(inputs) and _batched_steps(ops, steps, inputs)
        tables: dict[Any, np.ndarray] = {}
        steps = [
            _tabulated(op, step, tables) for op, step in zip(ops, batched or steps, strict=True)
        ]
        outputs = [(var.name, _np_dtype(var)) for var in function.outputs]
        keep = {name for name, _ in outputs} | {probabilities_name}
        steps = _with_frees(steps, keep)
        evaluator = cls(steps, consts, inputs, outputs, op_types, probabilities_name, bool(batched))
        tensors = [
            *function.outputs,
            *(op.inputs["probabilities"] for op in ops if op.op_type == "classify"),
        ]
        evaluator.output_shapes = {var.name: _static_shape(var) for var in tensors}
        return evaluator

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Evaluate the program.

        Args:
            **inputs: One array per program input. Image inputs take ``uint8 (H, W, 3)`` or
                ``(N, H, W, 3)`` RGB pixels (``(H, W)``/``(N, H, W)`` for grayscale); tensor
                inputs take arrays of the declared shape. A program fixed at batch 1 takes any
                batch: in one pass if :attr:`batched`, else item by item.

        Returns:
            The program outputs by name, in their declared dtypes (float16 outputs as float16),
            plus the tensor feeding ``classify`` under :attr:`probabilities_name` for classifiers.
        """
        missing = set(self.input_names) - set(inputs)
        unknown = set(inputs) - set(self.input_names)
        if missing or unknown:
            raise ValueError(
                f"expected inputs {choices(self.input_names)}; missing {sorted(missing)}, "
                f"unexpected {sorted(unknown)}"
            )
        arrays = {spec.name: _prepare_input(spec, inputs[spec.name]) for spec in self._inputs}
        batch = {len(a) for a in arrays.values() if np.ndim(a) > 0}
        if not _fixed_batch_one(self._inputs) or batch <= {1}:
            return self._run(arrays)
        if len(batch) > 1:
            raise ValueError(f"inputs of one call need one batch size; got {sorted(batch)}")
        if self.batched:
            return self._run(arrays)
        parts = [self._run({k: a[i : i + 1] for k, a in arrays.items()}) for i in range(*batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = {len(a) for a in arrays.values() if np.ndim(a) > 0}
        with self._lock:
            if batch != {self._arena_batch}:  # buffers of other sizes would only sit there
                self._arena.clear()
                self._arena_batch = batch.pop() if len(batch) == 1 else None
            _LOCAL.arena = self._arena
            try:
                return self._steps_through(arrays)
            finally:
                _LOCAL.arena = None
                self._arena.forget_lent()

    def _steps_through(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, Any] = {**self._consts, **arrays}
        holders: dict[int, int] = {}  # arena buffer id -> live vars in it

        def hold(value: Any, count: int) -> None:
            buffer = self._arena.root(value)
            if buffer is not None:
                holders[id(buffer)] = holders.get(id(buffer), 0) + count
                if not holders[id(buffer)]:
                    self._arena.recycle(buffer)

        for step in self._steps:
            kwargs = dict(step.defaults)
            for param, ref in step.args.items():
                kwargs[param] = env[ref] if isinstance(ref, str) else [env[r] for r in ref]
            result = step.fn(**kwargs)
            results = result if isinstance(result, tuple) else (result,)
            for name, value, dtype in zip(step.outputs, results, step.dtypes, strict=True):
                fresh = dtype == np.float16 and _owns_memory(value, kwargs.values())
                env[name] = _store(value, dtype, fresh)
                hold(env[name], 1)
            del kwargs, result, results
            for name in step.frees:
                hold(env.pop(name), -1)
        out = {name: _declared(env[name], dtype) for name, dtype in self._outputs}
        if self.probabilities_name is not None:
            out[self.probabilities_name] = env[self.probabilities_name]
        return out


def _owns_memory(value: Any, inputs: Iterable[Any]) -> bool:
    """True if ``value`` is an array that shares no memory with any of the op's ``inputs``."""
    if not isinstance(value, np.ndarray):
        return False
    for given in inputs:
        for array in given if isinstance(given, list) else (given,):
            if isinstance(array, np.ndarray) and np.may_share_memory(value, array):
                return False
    return True


def _declared(value: Any, dtype: np.dtype | None) -> Any:
    return value.astype(dtype) if dtype is not None and dtype == np.float16 else value


def _unsupported(op: Any) -> ArtifactError:
    return ArtifactError(
        f"MIL op {op.op_type!r} (op {op.name!r}) is not supported by the numpy reference "
        f"evaluator; supported ops: {choices(sorted(SUPPORTED_OPS))}"
    )


def _fold_constexpr(op: Any, consts: dict[str, Any]) -> None:
    kwargs = {param: consts.get(var.name, var.val) for param, var in op.inputs.items()}
    result = _CONSTEXPR[op.op_type](**kwargs)
    results = result if isinstance(result, tuple) else (result,)
    for var, value in zip(op.outputs, results, strict=True):
        consts[var.name] = _store(value, _np_dtype(var))


# Ops that only move values: their output needs no rounding when the input has its dtype.
_LAYOUT_OPS = frozenset(
    {"transpose", "reshape", "squeeze", "expand_dims", "slice_by_index", "slice_by_size"}
    | {"concat", "identity"}
)


def _make_step(op: Any) -> _Step:
    if op.op_type not in _OPS or op.blocks:
        raise _unsupported(op)
    args: dict[str, str | tuple[str, ...]] = {}
    literals: dict[str, Any] = {}
    for param, var in op.inputs.items():
        if isinstance(var, (list, tuple)):
            args[param] = tuple(v.name for v in var)
        elif _is_const(var):
            # Bind constants by value: a reloaded program can hold two consts with one name
            # (e.g. a classifier's label list named like a transpose's perm).
            literals[param] = _const_value(var.val)
        else:
            args[param] = var.name
    defaults = {
        k: _const_value(v)
        for k, v in op.default_inputs().items()
        if k not in args and k not in literals and v is not None
    }
    defaults.update(literals)
    dtypes = tuple(_np_dtype(v) for v in op.outputs)
    if op.op_type in _LAYOUT_OPS:
        data = op.inputs["values"] if op.op_type == "concat" else (op.inputs["x"],)
        if {_np_dtype(v) for v in data} == set(dtypes):
            dtypes = (None,) * len(dtypes)
    return _Step(
        op_type=op.op_type,
        fn=_OPS[op.op_type],
        args=args,
        defaults=defaults,
        outputs=tuple(v.name for v in op.outputs),
        dtypes=dtypes,
        frees=(),
    )


def _is_const(var: Any) -> bool:
    producer = getattr(var, "op", None)
    return producer is not None and producer.op_type == "const" and var.val is not None


def _with_frees(steps: list[_Step], keep: Iterable[str | None]) -> list[_Step]:
    """Mark each runtime var to be dropped right after its last reader, to bound memory."""
    produced = {name for step in steps for name in step.outputs}
    last_use: dict[str, int] = {}
    for i, step in enumerate(steps):
        for ref in step.args.values():
            for name in (ref,) if isinstance(ref, str) else ref:
                if name in produced:
                    last_use[name] = i
    keep = set(keep)
    frees: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    return [
        dataclasses.replace(step, frees=tuple(frees.get(i, ()))) for i, step in enumerate(steps)
    ]


# ---------------------------------------------------------------------------------------------
# Lookup tables: an expensive elementwise op whose one runtime input is float16 (or int8/uint8)
# can only ever see 65,536 (256) distinct values, so its results for all of them are computed
# once, at load, by the op's own function, and each call is a gather: exact, and the float64
# GELU of an fp16 program costs a cast and a table lookup.
_TABLE_OPS = frozenset(
    {"gelu", "erf", "exp", "exp2", "tanh", "sigmoid", "silu", "softplus", "sin", "cos"}
    | {"log", "sqrt", "rsqrt", "inverse", "quantize", "dequantize"}
)
_TABLE_DTYPES = frozenset({np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.uint8)})


class _Table:
    """``table[index of x]``: an elementwise op on ``dtype`` values, tabulated.

    A float16 value is held as a float32 whose low 13 mantissa bits are zero, so its float32
    bits shifted right by 13 index a table of 2**19 entries (fp16's 2**16 among them).
    """

    def __init__(self, param: str, dtype: np.dtype, table: np.ndarray):
        self.param = param
        self.dtype = dtype
        self.table = table

    def __call__(self, **kwargs: Any) -> np.ndarray:
        fp16 = self.dtype == np.float16
        values = np.asarray(kwargs[self.param], dtype=np.float32 if fp16 else self.dtype)
        bits, shift = (values.view(np.uint32), 13) if fp16 else (values.view(np.uint8), 0)
        out = _empty_like(values, self.table.dtype)  # in the memory order of values
        flat_bits, flat_out = bits.ravel(order="K"), out.ravel(order="K")
        index = np.empty(min(bits.size, _CHUNK), dtype=np.intp)  # take() wants intp indices
        for start in range(0, bits.size, _CHUNK):
            block = index[: flat_bits[start : start + _CHUNK].size]
            np.right_shift(flat_bits[start : start + _CHUNK], shift, out=block, casting="unsafe")
            np.take(self.table, block, out=flat_out[start : start + _CHUNK])
        return out


def _tabulated(op: Any, step: _Step, tables: dict[Any, np.ndarray]) -> _Step:
    """``step`` as a :class:`_Table` where it is a tabulable op, else ``step`` itself.

    ``tables``: tables already built, by op and parameters (ConvNeXt's GELUs share one).
    """
    if step.op_type not in _TABLE_OPS or len(step.args) != 1 or len(step.outputs) != 1:
        return step
    ((param, name),) = step.args.items()
    dtype = _np_dtype(op.inputs[param]) if isinstance(name, str) else None
    if dtype not in _TABLE_DTYPES or any(np.ndim(v) for v in step.defaults.values()):
        return step  # a per-channel scale, say: the result depends on the position too
    key = (step.op_type, dtype, step.dtypes[0], repr(sorted(step.defaults.items())))
    if key not in tables:
        if dtype == np.float16:
            values = (np.arange(1 << 19, dtype=np.uint32) << np.uint32(13)).view(np.float32)
        else:
            values = np.arange(256, dtype=np.uint8).view(dtype)
        with np.errstate(all="ignore"):  # the table covers inf and NaN too
            tables[key] = _store(step.fn(**step.defaults, **{param: values}), step.dtypes[0])
    return dataclasses.replace(step, fn=_Table(param, dtype, tables[key]), dtypes=(None,))


# ---------------------------------------------------------------------------------------------
# Batching a program fixed at batch 1: each op that reads a batch-carrying var (an input, or an
# output of such an op) is checked to keep the batch on axis 0 and to treat each item alone,
# from its declared shapes and parameters; reshapes and slices get the batch axis rewritten.
_ELEMENTWISE = frozenset(_OPS) - {
    "linear", "matmul", "layer_norm", "conv", "transpose", "reshape", "squeeze", "expand_dims",
    "concat", "slice_by_index", "slice_by_size", "quantize", "dequantize", "classify", "softmax",
    *(name for name in _OPS if name.startswith("reduce_")),
}  # fmt: skip
_UNKNOWN = object()  # a parameter bound to a runtime var, not a literal


def _fixed_batch_one(inputs: list[_Input]) -> bool:
    return bool(inputs) and all(spec.shape[:1] == (1,) for spec in inputs)


def _batched_steps(ops: list[Any], steps: list[_Step], inputs: list[_Input]) -> list[_Step]:
    """``steps`` rewritten to carry a batch axis; ``[]`` if some op cannot."""
    carriers = {spec.name for spec in inputs}
    batched = []
    for op, step in zip(ops, steps, strict=True):
        carried = {p: [n in carriers for n in _names(ref)] for p, ref in step.args.items()}
        carried = {p: flags for p, flags in carried.items() if any(flags)}
        if not carried:
            batched.append(step)
            continue
        if not all(all(flags) for flags in carried.values()):
            return []  # a list mixing batched and unbatched values (a concat with a constant)
        rewritten = _batch_step(op, step, set(carried))
        if rewritten is None:
            return []
        carriers.update(step.outputs)
        batched.append(rewritten)
    return batched


def _names(ref: str | tuple[str, ...]) -> tuple[str, ...]:
    return (ref,) if isinstance(ref, str) else ref


def _leading_one(var: Any) -> bool:
    shape = var.shape
    return len(shape) > 0 and isinstance(shape[0], (int, np.integer)) and shape[0] == 1


def _batch_step(op: Any, step: _Step, carried: set[str]) -> _Step | None:
    """``step`` for a batch on axis 0 of its ``carried`` inputs, or None where it cannot be."""
    kind = op.op_type
    if kind == "classify":
        return step if len(op.inputs["probabilities"].shape) == 2 else None
    if not all(_leading_one(v) for v in op.outputs):
        return None
    rank = len(op.outputs[0].shape)
    ranks = {p: len(op.inputs[p].shape) for p in carried if p != "values"}

    def literal(param: str) -> Any:
        return _UNKNOWN if param in step.args else step.defaults.get(param)

    def off_batch(axes: Any, of_rank: int) -> bool:
        return axes is not None and axes is not _UNKNOWN and 0 not in _axes(axes, of_rank)

    same_rank = all(r == rank for r in ranks.values())
    if kind in _ELEMENTWISE:
        ok = same_rank
    elif kind in ("quantize", "dequantize"):
        ok = same_rank and _per_item_scale(literal("scale"), literal("axis"), rank)
    elif kind == "softmax":
        ok = same_rank and off_batch(literal("axis"), rank)
    elif kind == "layer_norm":
        ok = same_rank and off_batch(literal("axes"), rank)
    elif kind.startswith("reduce_"):
        ok = off_batch(literal("axes"), ranks["x"])
    elif kind == "conv":
        ok = carried == {"x"} and same_rank and rank >= 3
    elif kind in ("linear", "matmul") and rank == 2:
        # (1, K) rows: BLAS computes one as a matrix-vector product, several as a matrix
        # product, with other rounding; row by row, each item gets its batch-1 result.
        ok = carried == {"x"} and same_rank and not literal("transpose_x")
        return dataclasses.replace(step, fn=_row_by_row(step.fn)) if ok else None
    elif kind in ("linear", "matmul"):
        ok = same_rank and rank >= 3
    elif kind == "transpose":
        perm = literal("perm")
        ok = perm is not _UNKNOWN and _ints(perm)[0] == 0
    elif kind == "squeeze":
        ok = off_batch(literal("axes"), ranks["x"])
    elif kind == "expand_dims":
        ok = off_batch(literal("axes"), rank)
    elif kind == "concat":
        value_ranks = [len(v.shape) for v in op.inputs["values"]]
        ok = all(r == rank for r in value_ranks) and off_batch(literal("axis"), rank)
    elif kind in ("reshape", "slice_by_index", "slice_by_size"):
        return _whole_batch_axis(step, literal)
    else:
        ok = False
    return step if ok else None


def _row_by_row(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def op(x: np.ndarray, **params: Any) -> np.ndarray:
        return np.concatenate([fn(x=x[i : i + 1], **params) for i in range(len(x))])

    return op


def _per_item_scale(scale: Any, axis: Any, rank: int) -> bool:
    if scale is _UNKNOWN or axis is _UNKNOWN:
        return False
    return np.ndim(scale) == 0 or (axis is not None and int(axis) % rank != 0)


def _whole_batch_axis(step: _Step, literal: Callable[[str], Any]) -> _Step | None:
    """A reshape or slice rewritten to span the whole batch axis (declared size 1 in and out)."""
    params = {"reshape": ("shape",), "slice_by_size": ("begin", "size")}.get(
        step.op_type, ("begin", "end", "stride", "begin_mask", "end_mask", "squeeze_mask")
    )
    values = {p: literal(p) for p in params}
    if any(v is _UNKNOWN for v in values.values()):
        return None
    if step.op_type == "reshape":
        shape = list(_ints(values["shape"]))
        shape[0] = 0  # copy the input's axis 0: the batch
        changes = {"shape": np.array(shape)}
    elif step.op_type == "slice_by_size":
        begin, size = list(_ints(values["begin"])), list(_ints(values["size"]))
        if begin[0] != 0:
            return None
        size[0] = -1
        changes = {"size": np.array(size)}
    else:
        stride, squeeze = values["stride"], values["squeeze_mask"]
        if (stride is not None and _ints(stride)[0] != 1) or (
            squeeze is not None and bool(np.asarray(squeeze).reshape(-1)[0])
        ):
            return None
        rank = len(_ints(values["begin"]))
        changes = {}
        for mask in ("begin_mask", "end_mask"):
            flags = np.zeros(rank, bool) if values[mask] is None else np.array(values[mask], bool)
            flags[0] = True
            changes[mask] = flags
    return dataclasses.replace(step, defaults={**step.defaults, **changes})


def _static_shape(var: Any) -> tuple[int | None, ...]:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)


def _describe_inputs(function: Any, spec: Any) -> list[_Input]:
    import coremltools as ct

    color_spaces = {}
    for feature in spec.description.input:
        if feature.type.WhichOneof("Type") == "imageType":
            enum = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace
            color_spaces[feature.name] = enum.Name(feature.type.imageType.colorSpace)
    inputs = []
    for name, var in function.inputs.items():
        inputs.append(_Input(name, _static_shape(var), _np_dtype(var), color_spaces.get(name)))
    return inputs


def _prepare_input(spec: _Input, value: Any) -> np.ndarray:
    array = _image_to_tensor(spec, value) if spec.color_space else np.asarray(value)
    fits = array.ndim == len(spec.shape) and all(
        want in (None, got) or (i == 0 and want == 1)  # a batch is looped over a batch-1 program
        for i, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True))
    )
    if not fits:
        raise ValueError(f"input {spec.name!r} has shape {spec.shape}; got {array.shape}")
    return _store(array, spec.dtype)


def _image_to_tensor(spec: _Input, pixels: Any) -> np.ndarray:
    """``uint8`` pixels -> float ``(N, C, H, W)`` in the model's channel order."""
    pixels = np.asarray(pixels)
    gray = spec.color_space.startswith("GRAYSCALE")
    if gray and pixels.ndim in (2, 3) and pixels.shape[-1] != 1:
        pixels = pixels[..., None]
    if pixels.ndim == 3:
        pixels = pixels[None]
    channels = 1 if gray else 3
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != channels:
        raise ValueError(
            f"image input {spec.name!r} ({spec.color_space}) takes uint8 (H, W, {channels}) or "
            f"(N, H, W, {channels}) pixels; got {pixels.dtype} {pixels.shape}"
        )
    expected_hw = spec.shape[2:]
    if None not in expected_hw and tuple(pixels.shape[1:3]) != expected_hw:
        raise ValueError(
            f"image input {spec.name!r} is {expected_hw[0]}x{expected_hw[1]} (HxW); "
            f"got {pixels.shape[1]}x{pixels.shape[2]}"
        )
    if spec.color_space == "BGR":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
