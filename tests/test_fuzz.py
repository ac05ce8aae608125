"""Differential fuzzing: every public function against the float64 reference (and torch in float64).

Hypothesis draws the shape (C = 1, C = 0 for the softmax family, empty batches, K extra dimensions,
any class axis, tiles wider than the kernels' 128 lanes), the memory layout (Fortran order, negative
and step strides, permuted axes, zero-stride broadcasts), the dtype, every option of SPEC.md and the
values (normal, ties, constant rows, subnormals, +-1e30, +-inf, NaN, rows masked with -inf). The
arrays themselves come from a NumPy generator seeded by Hypothesis, so an example stays cheap and a
failure still shrinks to the smallest shape and the simplest options.

What is compared:
  * NaN positions exactly, infinity positions and signs exactly;
  * finite values within SPEC's tolerance (float32: 1e-6 relative plus 1e-6 absolute; float64:
    1e-12), where "relative" is taken to the magnitude of the terms of SPEC's formula (the sum of
    their absolute values), so that a difference of two large terms is allowed the rounding of the
    terms, and the absolute part is scaled by the gradient's row scale s_i and the largest weight;
    a reduced loss is allowed the rounding of sum_i |l_i| (rows of opposite sign cancel).

Where SPEC and torch part ways (an ignored row's gradient is 0 in SPEC, NaN in torch for a row of
NaN logits; D = 0 with "mean"), torch is not asked.

The run is derandomised (the same examples on every run) and sized by FASTXENT_FUZZ_EXAMPLES
(examples per test; default 200). See tests/README.md for the long run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

import fastxent as fx
import reference as ref

try:  # torch, in float64, is a second oracle where it is installed
    import torch  # noqa: F401

    import torch_ref
except ImportError:  # pragma: no cover - depends on the environment
    torch_ref = None

EXAMPLES = int(os.environ.get("FASTXENT_FUZZ_EXAMPLES", "200"))
DERANDOMIZE = os.environ.get("FASTXENT_FUZZ_DERANDOMIZE", "1") != "0"

settings.register_profile(
    "fastxent-fuzz",
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("fastxent-fuzz")

TOLERANCE = {np.dtype(np.float32): (1e-6, 1e-6), np.dtype(np.float64): (1e-12, 1e-12)}
DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
# Class counts around every vector width (4, 8, 16 lanes), the 32-class small-row limit, and a
# few wide rows.
CLASS_COUNTS = [1, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 257]
# Other extents: empty, one, small, and around the 128-lane tile of the strided kernels.
OTHER_EXTENTS = st.one_of(st.integers(0, 5), st.sampled_from([1, 2, 3, 127, 128, 129, 300]))
MAX_ELEMENTS = 200_000
HUGE = 1e30


# ---------------------------------------------------------------------------
# drawing inputs
# ---------------------------------------------------------------------------


@dataclass
class Case:
    x: np.ndarray  # what fastxent gets (any layout)
    axis: Optional[int]  # what fastxent gets (None: PyTorch's convention)
    class_axis: int
    dtype: np.dtype
    rng: np.random.Generator

    @property
    def x64(self) -> np.ndarray:
        return np.array(self.x, dtype=np.float64)

    @property
    def classes(self) -> int:
        return self.x.shape[self.class_axis]

    @property
    def row_shape(self) -> tuple:
        a = self.class_axis
        return self.x.shape[:a] + self.x.shape[a + 1 :]

    @property
    def rows(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64))


def _values(draw, rng: np.random.Generator, shape: tuple, class_axis: int, dtype: np.dtype) -> np.ndarray:
    mode = draw(st.sampled_from(["normal", "normal", "ties", "constant", "subnormal", "wide"]))
    if mode == "normal":
        x = draw(st.sampled_from([0.1, 1.0, 3.0, 30.0])) * rng.standard_normal(shape)
    elif mode == "ties":
        x = rng.integers(-2, 3, shape).astype(np.float64)
    elif mode == "constant":
        x = np.full(shape, draw(st.sampled_from([0.0, -7.5, 40.0])))
    elif mode == "subnormal":
        tiny = float(np.finfo(dtype).smallest_subnormal)
        x = rng.integers(-4, 5, shape) * tiny
    else:  # a wide spread: exp() underflows for most classes
        x = rng.uniform(-200.0, 200.0, shape)
    x = x.astype(dtype)
    event(f"values: {mode}")

    specials = draw(
        st.lists(
            st.sampled_from(["inf", "-inf", "nan", "huge", "-huge", "subnormal", "zero"]),
            max_size=3,
            unique=True,
        )
    )
    if specials and x.size:
        pool = {
            "inf": np.inf,
            "-inf": -np.inf,
            "nan": np.nan,
            "huge": HUGE,
            "-huge": -HUGE,
            "subnormal": float(np.finfo(dtype).smallest_subnormal),
            "zero": -0.0,
        }
        fraction = draw(st.sampled_from([0.01, 0.1, 0.5, 1.0]))
        chosen = rng.random(shape) < fraction
        picks = np.array([pool[name] for name in specials], dtype=dtype)
        x[chosen] = picks[rng.integers(0, len(picks), int(chosen.sum()))]
        event("values: with specials")
    if draw(st.booleans()) and x.size:
        # Whole rows masked with -inf (a row of only -inf has no softmax).
        moved = np.moveaxis(x, class_axis, -1)
        masked = rng.random(moved.shape[:-1]) < 0.3
        moved[masked] = -np.inf
    return x


def _layout(draw, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """The same values as ``x`` in another memory layout."""
    kind = draw(st.sampled_from(["C", "C", "F", "reversed", "step", "permuted", "broadcast", "offset"]))
    event(f"layout: {kind}")
    if x.ndim == 0 or x.size == 0 or kind == "C":
        return x
    dim = draw(st.integers(0, x.ndim - 1))
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "reversed":
        flip = tuple(slice(None, None, -1) if d == dim else slice(None) for d in range(x.ndim))
        return np.ascontiguousarray(x[flip])[flip]
    if kind == "step":
        step = draw(st.sampled_from([2, 3]))
        big_shape = tuple(s * step if d == dim else s for d, s in enumerate(x.shape))
        big = np.full(big_shape, np.nan, dtype=x.dtype)
        pick = tuple(slice(None, None, step) if d == dim else slice(None) for d in range(x.ndim))
        big[pick] = x
        return big[pick]
    if kind == "permuted":
        order = list(rng.permutation(x.ndim))
        return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))
    if kind == "broadcast":
        # Zero stride along one dimension: the values become copies of the first slice.
        first = np.take(x, [0], axis=dim)
        return np.broadcast_to(first, x.shape)
    # "offset": a view that starts one element into a bigger buffer (misaligned for SIMD loads).
    flat = np.empty(x.size + 1, dtype=x.dtype)
    flat[1:] = x.ravel()
    return flat[1:].reshape(x.shape)


@st.composite
def cases(draw, losses: bool) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(1, 4))
    if losses and draw(st.booleans()):
        axis = None  # PyTorch's convention
        class_axis = ref.class_axis(ndim, None)
    else:
        class_axis = draw(st.integers(0, ndim - 1))
        axis = draw(st.sampled_from([class_axis, class_axis - ndim]))
    classes = draw(st.sampled_from(CLASS_COUNTS if losses else [0] + CLASS_COUNTS))
    shape = [draw(OTHER_EXTENTS) for _ in range(ndim)]
    shape[class_axis] = classes
    shape = tuple(shape)
    assume(int(np.prod(shape, dtype=np.int64)) <= MAX_ELEMENTS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _values(draw, rng, shape, class_axis, dtype)
    x = _layout(draw, rng, x)
    note(f"shape={x.shape} strides={x.strides} dtype={dtype} axis={axis}")
    size = x.size
    event("elements: " + ("0" if size == 0 else "1-999" if size < 1000 else "1000-32767" if size < 32768 else ">=32768 (threads)"))
    event(f"classes: {'1' if shape[class_axis] == 1 else '>32' if shape[class_axis] > 32 else '0' if shape[class_axis] == 0 else '2-32'}")
    event(f"inner extent > 1: {int(np.prod(shape[class_axis + 1:], dtype=np.int64)) > 1}")
    return Case(x, axis, class_axis, dtype, rng)


@dataclass
class LossOptions:
    target: np.ndarray
    probabilities: bool
    weight: Optional[np.ndarray]
    ignore_index: int
    label_smoothing: float
    reduction: str
    grad_output: Any

    def kwargs(self, axis) -> dict:
        return dict(
            axis=axis,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


INDEX_DTYPES = [np.int64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32]


def _index_target(draw, case: Case, ignore_index: int) -> np.ndarray:
    C = case.classes
    rng = case.rng
    candidates = [d for d in INDEX_DTYPES if np.iinfo(d).max >= C - 1]
    dtype = np.dtype(draw(st.sampled_from(candidates)))
    target = rng.integers(0, C, case.row_shape)
    info = np.iinfo(dtype)
    if info.min <= ignore_index <= info.max:
        fraction = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
        target = np.where(rng.random(case.row_shape) < fraction, ignore_index, target)
    target = np.asarray(target).astype(dtype)
    if case.x.ndim == 1 and draw(st.booleans()):
        target = target.reshape(1)  # SPEC: a (C,) input takes a 0-d or a (1,) target
    return target


def _probability_target(draw, case: Case) -> np.ndarray:
    rng = case.rng
    shape = case.x.shape
    kind = draw(st.sampled_from(["softmax", "one-hot", "unnormalised", "sparse"]))
    if kind == "softmax":
        y = ref.softmax(2.0 * rng.standard_normal(shape), axis=case.class_axis)
    elif kind == "one-hot":
        index = rng.integers(0, case.classes, case.row_shape)
        y = np.moveaxis(np.eye(case.classes)[index], -1, case.class_axis) if index.ndim else np.eye(case.classes)[index]
    elif kind == "unnormalised":
        y = rng.uniform(0.0, 2.0, shape)
    else:
        y = np.where(rng.random(shape) < 0.7, 0.0, rng.uniform(0.0, 1.0, shape))
    target_dtype = draw(st.sampled_from([case.dtype, np.dtype(np.float64), np.dtype(np.float32)]))
    return np.asarray(y).astype(target_dtype)


def _weight(draw, case: Case) -> Optional[np.ndarray]:
    kind = draw(st.sampled_from([None, None, "uniform", "with-zeros", "ones", "integer"]))
    if kind is None:
        return None
    C = case.classes
    if kind == "uniform":
        w = case.rng.uniform(0.25, 2.0, C)
    elif kind == "with-zeros":
        w = np.where(case.rng.random(C) < 0.4, 0.0, case.rng.uniform(0.25, 2.0, C))
    elif kind == "ones":
        w = np.ones(C)
    else:
        return case.rng.integers(0, 3, C).astype(np.int64)
    return w.astype(draw(st.sampled_from([case.dtype, np.dtype(np.float64)])))


@st.composite
def loss_options(draw, case: Case, *, index_only: bool = False, smoothing: bool = True) -> LossOptions:
    probabilities = not index_only and draw(st.booleans())
    C = case.classes
    ignore_index = draw(st.sampled_from([-100, -100, -1, 0, C - 1, C]))
    if probabilities:
        target = _probability_target(draw, case)
    else:
        target = _index_target(draw, case, ignore_index)
    label_smoothing = (
        # Not below 1e-6: e / C would round to 0 in float32 and turn a smoothed target of 0 into
        # an exact 0 (0 * -inf = NaN where the float64 reference has +inf), as in torch's float32.
        draw(st.one_of(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]), st.floats(1e-6, 1.0))) if smoothing else 0.0
    )
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    if reduction == "none" and draw(st.booleans()):
        grad_output = case.rng.uniform(-2.0, 2.0, case.row_shape)
    else:
        grad_output = draw(st.sampled_from([1.0, 1.0, 0.0, -0.5, 2.0]))
    event(f"target: {'probabilities' if probabilities else 'indices'}; reduction: {reduction}")
    event(f"label_smoothing > 0: {label_smoothing > 0}")
    options = LossOptions(target, probabilities, _weight(draw, case), ignore_index, label_smoothing, reduction, grad_output)
    note(
        f"target dtype={target.dtype} shape={target.shape} weight={None if options.weight is None else options.weight.dtype} "
        f"ignore_index={ignore_index} label_smoothing={label_smoothing} reduction={reduction} "
        f"grad_output={'array' if np.ndim(grad_output) else grad_output}"
    )
    return options


# ---------------------------------------------------------------------------
# what the results are compared with
# ---------------------------------------------------------------------------


def as_computed(value, dtype: np.dtype):
    """An array argument as fastxent computes with it (converted to the input's dtype), in float64."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(dtype).astype(np.float64)
    return array


def assert_matches(got, expected, dtype: np.dtype, *, magnitude=None, atol_scale=1.0, what: str = "") -> None:
    """NaN and infinities exactly where ``expected`` has them; finite values within tolerance.

    ``magnitude`` is the size of the terms that make up each expected value (default: the value
    itself); the allowed error is rtol * magnitude + atol * atol_scale.
    """
    got = np.asarray(got)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    with np.errstate(over="ignore", invalid="ignore"):
        # What the reference is in the result's dtype (a float64 value beyond float32's range is inf).
        expected_in_dtype = expected.astype(dtype).astype(np.float64)
    got64 = got.astype(np.float64)
    nan_got, nan_expected = np.isnan(got64), np.isnan(expected_in_dtype)
    where = np.flatnonzero(nan_got != nan_expected)
    assert where.size == 0, (
        f"{what}: NaN positions differ at flat index {where[:5]}: got {got64.flat[where[:5]]}, "
        f"expected {expected_in_dtype.flat[where[:5]]}"
    )
    for sign in (1, -1):
        inf_got = got64 == sign * np.inf
        inf_expected = expected_in_dtype == sign * np.inf
        where = np.flatnonzero(inf_got != inf_expected)
        assert where.size == 0, (
            f"{what}: {'+' if sign > 0 else '-'}inf positions differ at flat index {where[:5]}: got "
            f"{got64.flat[where[:5]]}, expected {expected_in_dtype.flat[where[:5]]}"
        )
    finite = np.isfinite(expected_in_dtype)
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    size = np.abs(expected) if magnitude is None else np.broadcast_to(np.asarray(magnitude, dtype=np.float64), expected.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        allowed = rtol * size + atol * np.asarray(atol_scale, dtype=np.float64)
        error = np.abs(got64 - expected)
        bad = finite & ~(error <= allowed)
    where = np.flatnonzero(bad)
    assert where.size == 0, (
        f"{what}: {where.size} of {expected.size} values out of tolerance, e.g. at flat index {where[:5]}: "
        f"got {got64.flat[where[:5]]}, expected {expected.flat[where[:5]]}, allowed error {np.broadcast_to(allowed, expected.shape).flat[where[:5]]}"
    )


def _rows_last(a: np.ndarray, class_axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(a, dtype=np.float64), class_axis, -1)


def logsumexp_magnitude(x64: np.ndarray, axis: int) -> np.ndarray:
    """|max| + |log(sum(exp(x - max)))|: logsumexp = max + log(sum) may cancel."""
    if x64.shape[axis] == 0:
        return np.zeros(x64.shape[:axis] + x64.shape[axis + 1 :])
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x64, axis=axis)
        return np.abs(m) + np.abs(ref.logsumexp(x64, axis=axis) - m)


@dataclass
class LossScales:
    """The tolerance's absolute scale for a loss call: the largest weight, and the row scales s_i."""

    weight_max: float
    row_scale: np.ndarray  # s_i, in the row shape
    kept_rows: int
    denominator: float


def loss_scales(case: Case, options: LossOptions, weight64: Optional[np.ndarray], grad_output64) -> LossScales:
    C = case.classes
    w = np.ones(C) if weight64 is None else weight64
    weight_max = max(1.0, float(np.max(np.abs(w))) if C else 1.0)
    rows = case.rows
    if options.probabilities:
        kept_rows, denominator = rows, float(rows)
    else:
        t = np.asarray(options.target).reshape(-1).astype(np.int64)
        valid = t != options.ignore_index
        kept_rows = int(valid.sum())
        denominator = float(np.sum(w[t[valid]]))
    if options.reduction == "none":
        s = np.broadcast_to(np.asarray(grad_output64, dtype=np.float64), case.row_shape)
    elif options.reduction == "sum":
        s = np.full(case.row_shape, float(grad_output64))
    else:
        s = np.full(case.row_shape, float(grad_output64) / denominator if denominator else 0.0)
    return LossScales(weight_max, np.abs(s), kept_rows, denominator)


def grad_magnitude(case: Case, options: LossOptions, weight64, target64, scales: LossScales) -> np.ndarray:
    """|s_i| times the sum of the absolute values of the terms of SPEC's gradient formula."""
    C = case.classes
    w = np.ones(C) if weight64 is None else weight64
    e = options.label_smoothing
    p = _rows_last(ref.softmax(case.x64, axis=case.class_axis), case.class_axis)
    with np.errstate(invalid="ignore", over="ignore"):
        if options.probabilities:
            y = _rows_last(target64, case.class_axis)
            if e > 0:
                y = (1 - e) * y + e / C
            terms = np.abs(p) * np.sum(np.abs(w * y), axis=-1, keepdims=True) + np.abs(w * y)
        else:
            t = np.asarray(options.target).astype(np.int64).reshape(case.row_shape)
            safe = np.where(t == options.ignore_index, 0, t)
            wt = np.abs(w[safe])[..., None] if C else 0.0
            W = np.sum(np.abs(w))
            terms = np.abs(p) * ((1 - e) * wt + e * W / C) + (1 - e) * wt + (e / C) * np.abs(w)
        terms = np.where(np.isfinite(terms), terms, 0.0)
        magnitude = terms * scales.row_scale[..., None]
    return np.moveaxis(magnitude, -1, case.class_axis)


def loss_magnitude(expected, scales: LossScales, options: LossOptions):
    """The allowed absolute error of a loss: per row for 'none', summed for 'sum', over D for 'mean'."""
    if options.reduction == "none":
        return scales.weight_max
    if options.reduction == "sum":
        return scales.weight_max * max(scales.kept_rows, 1)
    if scales.denominator == 0:
        return scales.weight_max
    return scales.weight_max * max(scales.kept_rows, 1) / scales.denominator


def quiet(function, *args, **kwargs):
    """A reference computation, without NumPy's warnings about inf - inf and the like (the
    reference computes them on purpose; fastxent's own calls stay under filterwarnings=error)."""
    with np.errstate(all="ignore"):
        return function(*args, **kwargs)


def check_with_torch(function, *args, **kwargs):
    """torch's float64 result, or None where torch is not installed or refuses the case."""
    if torch_ref is None:
        return None
    try:
        return quiet(function, *args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as error:  # e.g. shapes torch does not take
        note(f"torch refused the case: {error}")
        return None


# ---------------------------------------------------------------------------
# the softmax family
# ---------------------------------------------------------------------------


@FUZZ
@given(case=cases(losses=False), function=st.sampled_from(["log_softmax", "softmax", "logsumexp"]), use_out=st.booleans())
def test_softmax_family(case, function, use_out):
    x64, axis = case.x64, case.class_axis
    if function == "logsumexp":
        got = fx.logsumexp(case.x, axis=case.axis)
        magnitude = quiet(logsumexp_magnitude, x64, axis)
    elif use_out:
        out = np.empty(case.x.shape, case.dtype)
        got = getattr(fx, function)(case.x, axis=case.axis, out=out)
        assert got is out
        magnitude = None
    else:
        got = getattr(fx, function)(case.x, axis=case.axis)
        magnitude = None
    assert isinstance(got, np.ndarray) and got.flags.c_contiguous
    expected = quiet(getattr(ref, function), x64, axis=axis)
    assert_matches(got, expected, case.dtype, magnitude=magnitude, what=f"{function} vs reference")
    if x64.size and case.classes:
        from_torch = check_with_torch(getattr(torch_ref, function) if torch_ref else None, x64, axis=axis)
        if from_torch is not None:
            assert_matches(got, from_torch, case.dtype, magnitude=magnitude, what=f"{function} vs torch")


# ---------------------------------------------------------------------------
# the losses
# ---------------------------------------------------------------------------


def _reference_inputs(case: Case, options: LossOptions):
    weight64 = as_computed(options.weight, case.dtype)
    if weight64 is not None:
        weight64 = weight64.astype(np.float64)
    target64 = as_computed(options.target, case.dtype) if options.probabilities else options.target
    grad_output64 = as_computed(options.grad_output, case.dtype) if np.ndim(options.grad_output) else options.grad_output
    return weight64, target64, grad_output64


def reduction_magnitude(expected, row_losses, scales: LossScales, options: LossOptions):
    """The size of the terms of a reduced loss: sum_i |l_i| (over D for 'mean'). Rows of +-1e30 of
    both signs (nll_loss of any log-probabilities) cancel, and no summation order is exact then."""
    if options.reduction == "none":
        return None
    rows = np.abs(np.asarray(row_losses, dtype=np.float64))
    total = float(np.sum(rows[np.isfinite(rows)]))
    if options.reduction == "mean":
        total = total / scales.denominator if scales.denominator else 0.0
    with np.errstate(invalid="ignore"):
        return np.maximum(np.abs(np.asarray(expected, dtype=np.float64)), total)


def _check_loss(got, expected, case, options, scales, what, row_losses):
    if options.reduction == "none":
        assert isinstance(got, np.ndarray), f"{what}: expected an ndarray, got {type(got)}"
    else:
        assert isinstance(got, np.generic), f"{what}: expected a NumPy scalar, got {type(got)}"
    assert_matches(
        got,
        expected,
        case.dtype,
        magnitude=reduction_magnitude(expected, row_losses, scales, options),
        atol_scale=loss_magnitude(expected, scales, options),
        what=what,
    )


def _check_grad(got, expected, case, options, scales, magnitude, what):
    assert isinstance(got, np.ndarray) and got.flags.c_contiguous
    if options.reduction == "mean" and scales.denominator == 0 and not np.all(np.isfinite(case.x)):
        # SPEC: D = 0 gives a zero gradient, even for rows of NaN or only -inf logits. That case
        # has its own test below (test_zero_denominator_gives_a_zero_gradient); here it would stop
        # the search at the first such example.
        return
    atol_scale = scales.weight_max * np.moveaxis(
        np.broadcast_to(np.maximum(scales.row_scale, 1.0)[..., None], case.row_shape + (case.classes,)), -1, case.class_axis
    )
    assert_matches(got, expected, case.dtype, magnitude=magnitude, atol_scale=atol_scale, what=what)


def _torch_applies(case: Case, options: LossOptions, scales: LossScales) -> bool:
    """Where SPEC follows PyTorch: everywhere except D = 0 with 'mean' (SPEC: zero gradient)."""
    if case.rows == 0:
        return False
    return not (options.reduction == "mean" and scales.denominator == 0)


@FUZZ
@given(data=st.data(), case=cases(losses=True))
def test_cross_entropy_family(data, case):
    options = data.draw(loss_options(case))
    weight64, target64, grad_output64 = _reference_inputs(case, options)
    scales = loss_scales(case, options, weight64, grad_output64)
    kwargs = options.kwargs(case.axis)
    ref_kwargs = dict(kwargs, axis=case.class_axis)
    x64 = case.x64

    expected_loss = quiet(ref.cross_entropy, x64, target64, weight64, **ref_kwargs)
    row_losses = quiet(ref.cross_entropy, x64, target64, weight64, **dict(ref_kwargs, reduction="none"))
    expected_grad = quiet(ref.cross_entropy_grad, x64, target64, weight64, grad_output=grad_output64, **ref_kwargs)
    magnitude = quiet(grad_magnitude, case, options, weight64, target64, scales)

    loss = fx.cross_entropy(case.x, options.target, options.weight, **kwargs)
    _check_loss(loss, expected_loss, case, options, scales, "cross_entropy", row_losses)

    grad = fx.cross_entropy_grad(case.x, options.target, options.weight, grad_output=options.grad_output, **kwargs)
    _check_grad(grad, expected_grad, case, options, scales, magnitude, "cross_entropy_grad")

    out = np.empty(case.x.shape, case.dtype)
    both_loss, both_grad = fx.cross_entropy_with_grad(
        case.x, options.target, options.weight, grad_output=options.grad_output, out=out, **kwargs
    )
    assert both_grad is out
    _check_loss(both_loss, expected_loss, case, options, scales, "cross_entropy_with_grad loss", row_losses)
    _check_grad(both_grad, expected_grad, case, options, scales, magnitude, "cross_entropy_with_grad grad")

    criterion = fx.CrossEntropyLoss(
        options.weight,
        axis=case.axis,
        ignore_index=options.ignore_index,
        reduction=options.reduction,
        label_smoothing=options.label_smoothing,
    )
    _check_loss(criterion(case.x, options.target), expected_loss, case, options, scales, "CrossEntropyLoss", row_losses)
    backward = criterion.backward(options.grad_output)
    _check_grad(backward, expected_grad, case, options, scales, magnitude, "CrossEntropyLoss.backward")

    if _torch_applies(case, options, scales):
        from_torch = check_with_torch(
            torch_ref.cross_entropy_with_grad if torch_ref else None,
            x64,
            target64,
            weight64,
            grad_output=grad_output64,
            **ref_kwargs,
        )
        if from_torch is not None:
            torch_loss, torch_grad = from_torch
            if not options.probabilities:
                # SPEC's v_i: an ignored row's gradient is zero. torch multiplies its log_softmax
                # backward by zero, which keeps the NaN of a row of NaN or only -inf logits.
                ignored = np.asarray(options.target).reshape(case.row_shape) == options.ignore_index
                ignored = np.moveaxis(np.broadcast_to(ignored[..., None], case.row_shape + (case.classes,)), -1, case.class_axis)
                torch_grad = np.where(ignored, 0.0, torch_grad)
            _check_loss(loss, torch_loss, case, options, scales, "loss vs torch", row_losses)
            _check_grad(grad, torch_grad, case, options, scales, magnitude, "grad vs torch")


@FUZZ
@given(data=st.data(), case=cases(losses=True))
def test_nll_loss(data, case):
    options = data.draw(loss_options(case, index_only=True, smoothing=False))
    weight64, _, _ = _reference_inputs(case, options)
    scales = loss_scales(case, options, weight64, 1.0)
    kwargs = dict(axis=case.axis, ignore_index=options.ignore_index, reduction=options.reduction)
    # Log-probabilities: the input itself (any values, including inf and NaN) or a real log_softmax.
    log_probs = case.x if data.draw(st.booleans()) else quiet(ref.log_softmax, case.x64, axis=case.class_axis).astype(case.dtype)
    log_probs64 = np.array(log_probs, dtype=np.float64)
    expected = quiet(ref.nll_loss, log_probs64, options.target, weight64, **dict(kwargs, axis=case.class_axis))
    row_losses = quiet(ref.nll_loss, log_probs64, options.target, weight64, **dict(kwargs, axis=case.class_axis, reduction="none"))
    got = fx.nll_loss(log_probs, options.target, options.weight, **kwargs)
    _check_loss(got, expected, case, options, scales, "nll_loss", row_losses)
    if case.rows and not (options.reduction == "mean" and scales.denominator == 0):
        from_torch = check_with_torch(
            torch_ref.nll_loss if torch_ref else None,
            log_probs64,
            options.target,
            weight64,
            **dict(kwargs, axis=case.class_axis),
        )
        if from_torch is not None:
            _check_loss(got, from_torch, case, options, scales, "nll_loss vs torch", row_losses)


@FUZZ
@given(data=st.data(), case=cases(losses=True))
def test_results_do_not_depend_on_layout(data, case):
    """The same values in C order give bitwise the same results as in any other layout."""
    options = data.draw(loss_options(case))
    kwargs = options.kwargs(case.axis)
    contiguous = np.ascontiguousarray(case.x)
    a_loss, a_grad = fx.cross_entropy_with_grad(case.x, options.target, options.weight, grad_output=options.grad_output, **kwargs)
    b_loss, b_grad = fx.cross_entropy_with_grad(contiguous, options.target, options.weight, grad_output=options.grad_output, **kwargs)
    np.testing.assert_array_equal(a_loss, b_loss)
    np.testing.assert_array_equal(a_grad, b_grad)
    for function in ("log_softmax", "softmax", "logsumexp"):
        np.testing.assert_array_equal(
            getattr(fx, function)(case.x, axis=case.class_axis), getattr(fx, function)(contiguous, axis=case.class_axis)
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad", "CrossEntropyLoss"])
@pytest.mark.parametrize(
    "row",
    [[-np.inf, -np.inf], [np.nan, 0.0], [np.inf, 0.0], [1e30, -np.inf]],
    ids=["all-masked", "nan", "inf", "huge-and-masked"],
)
def test_zero_denominator_gives_a_zero_gradient(dtype, api, row):
    """SPEC: with reduction="mean" and D = 0 the gradient is zero. D is 0 here because the only
    row's target class has weight 0 (not because the row is ignored): the row's log_softmax is NaN,
    and 0 * NaN must not leak into the gradient. (Found by the fuzzer.)"""
    x = np.array([row, [0.5, -0.5]], dtype=dtype)
    target = np.array([0, 0])
    weight = np.array([0.0, 1.0], dtype=dtype)
    if api == "CrossEntropyLoss":
        criterion = fx.CrossEntropyLoss(weight, reduction="mean")
        loss = criterion(x, target)
        grad = criterion.backward()
    elif api == "cross_entropy_with_grad":
        loss, grad = fx.cross_entropy_with_grad(x, target, weight, reduction="mean")
    else:
        loss, grad = fx.cross_entropy(x, target, weight, reduction="mean"), fx.cross_entropy_grad(x, target, weight)
    assert np.isnan(loss)  # 0 / 0 (or NaN / 0)
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ref.cross_entropy_grad(x.astype(np.float64), target, weight.astype(np.float64)), 0.0)


def test_profile_is_seeded_and_sized():
    """CI runs a fixed, bounded set of examples (see tests/README.md for the long run)."""
    assert FUZZ.max_examples == EXAMPLES
    assert FUZZ.deadline is None
    if "FASTXENT_FUZZ_DERANDOMIZE" not in os.environ:
        assert FUZZ.derandomize
