"""Builders for test inputs, the shared parameter grid, and the tolerances of SPEC.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import reference as ref

# Enough classes to cover whole SIMD vectors (8 or 16 lanes) plus a tail.
NUM_CLASSES = 37

REDUCTIONS = ref.REDUCTIONS
FLOAT_DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64]


@dataclass(frozen=True)
class Layout:
    """An input shape and its class axis (``None``: PyTorch's convention)."""

    shape: tuple
    axis: int | None

    @property
    def class_axis(self) -> int:
        return ref.class_axis(len(self.shape), self.axis)

    @property
    def num_classes(self) -> int:
        return self.shape[self.class_axis]

    @property
    def row_shape(self) -> tuple:
        a = self.class_axis
        return self.shape[:a] + self.shape[a + 1 :]


C = NUM_CLASSES
# The shapes every public function is tested on (SPEC's shape table plus
# the (batch, seq, vocab) layout with axis=-1).
LAYOUTS = [
    pytest.param(Layout((C,), None), id="C"),
    pytest.param(Layout((6, C), None), id="N,C"),
    pytest.param(Layout((4, C, 3), None), id="N,C,d1"),
    pytest.param(Layout((3, C, 2, 3), None), id="N,C,d1,d2"),
    pytest.param(Layout((3, 4, C), -1), id="B,T,V-axis=-1"),
]
# Explicit class axes other than PyTorch's default.
OTHER_AXES = [
    pytest.param(Layout((C,), 0), id="C-axis=0"),
    pytest.param(Layout((C,), -1), id="C-axis=-1"),
    pytest.param(Layout((6, C), -1), id="N,C-axis=-1"),
    pytest.param(Layout((C, 6), 0), id="C,N-axis=0"),
    pytest.param(Layout((C, 4, 3), 0), id="C,d1,d2-axis=0"),
    pytest.param(Layout((2, 3, C, 4), 2), id="a,b,C,d-axis=2"),
    pytest.param(Layout((2, 3, C, 4), -2), id="a,b,C,d-axis=-2"),
    pytest.param(Layout((2, 3, 4, C), 3), id="a,b,c,C-axis=3"),
]


@dataclass(frozen=True)
class Options:
    """Loss options for index targets."""

    weight: bool = False
    ignore_index: int = -100
    ignore_some_rows: bool = False
    label_smoothing: float = 0.0


IGNORED_CLASS = 3
INDEX_OPTIONS = [
    pytest.param(Options(), id="plain"),
    pytest.param(Options(weight=True), id="weight"),
    pytest.param(Options(ignore_some_rows=True), id="ignore"),
    pytest.param(Options(ignore_index=IGNORED_CLASS, ignore_some_rows=True), id="ignore-real-class"),
    pytest.param(Options(label_smoothing=0.1), id="smoothing"),
    pytest.param(Options(label_smoothing=1.0), id="smoothing=1"),
    pytest.param(
        Options(weight=True, ignore_some_rows=True, label_smoothing=0.2), id="weight+ignore+smoothing"
    ),
    pytest.param(
        Options(weight=True, ignore_index=IGNORED_CLASS, ignore_some_rows=True, label_smoothing=0.3),
        id="weight+ignore-real-class+smoothing",
    ),
]
PROBABILITY_OPTIONS = [
    pytest.param(Options(), id="plain"),
    pytest.param(Options(weight=True), id="weight"),
    pytest.param(Options(label_smoothing=0.15), id="smoothing"),
    # ignore_index does not apply to probability targets, even when it is a real class.
    pytest.param(
        Options(weight=True, ignore_index=IGNORED_CLASS, label_smoothing=0.4), id="weight+smoothing"
    ),
]

# (reduction, grad_output kind): a per-sample grad_output only exists for 'none'.
GRAD_MODES = [
    pytest.param("none", False, id="none-grad_output-scalar"),
    pytest.param("none", True, id="none-grad_output-per-sample"),
    pytest.param("sum", False, id="sum"),
    pytest.param("mean", False, id="mean"),
]


def make_grad_output(rng, layout: Layout, per_sample: bool):
    """A per-sample array of the loss shape, or a scalar other than the default 1."""
    if per_sample:
        return rng.uniform(-2.0, 2.0, layout.row_shape)
    return 0.75


# SPEC: float32 within 1e-6 relative plus 1e-6 absolute of the float64 reference.
TOLERANCE = {
    np.dtype(np.float16): dict(rtol=2e-3, atol=2e-3),
    np.dtype(np.float32): dict(rtol=1e-6, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def tolerance(dtype, terms: int = 1) -> dict:
    """Tolerance for a value that is a sum of ``terms`` per-element results."""
    tol = TOLERANCE[np.dtype(dtype)]
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(terms, 1))


def make_logits(rng, shape, dtype=np.float64, scale=3.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(dtype)


def make_weight(rng, num_classes, dtype=np.float64) -> np.ndarray:
    return rng.uniform(0.25, 2.0, num_classes).astype(dtype)


def make_infinite_weight_case(rng, shape, probabilities: bool, dtype):
    """(logits, target, weight, options): class 1 weighs inf and holds the max of about half the rows;
    index targets (never class 1, whose rows would be inf without smoothing) come with label
    smoothing, so that every row's loss is +inf either way."""
    layout = Layout(shape, None)
    x = make_logits(rng, shape, dtype)
    boosted = rng.random(layout.row_shape) < 0.5
    x[:, 1] = np.where(boosted, np.max(x, axis=1) + 1.0, x[:, 1])
    weight = np.ones(shape[1], dtype)
    weight[1] = np.inf
    if probabilities:
        return x, make_probability_target(rng, layout, dtype), weight, {}
    target = make_index_target(rng, layout)
    target[target == 1] = 0
    return x, target, weight, {"label_smoothing": 0.1}


def make_index_target(rng, layout: Layout, options: Options = Options(), dtype=np.int64) -> np.ndarray:
    """Class indices for ``layout``; some rows set to ``ignore_index`` when asked.

    A single row (0-d target) is ignored only when ``ignore_index`` is a real class,
    so that a (C,) input meets both an ignored row and a kept one across the grid.
    """
    C = layout.num_classes
    target = rng.integers(0, C, size=layout.row_shape)
    if options.ignore_some_rows:
        if target.ndim == 0:
            target = np.asarray(options.ignore_index if 0 <= options.ignore_index < C else 0)
        elif target.size:
            ignored = rng.random(layout.row_shape) < 0.3
            ignored.flat[0] = True
            ignored.flat[-1] = False
            target = np.where(ignored, options.ignore_index, target)
    if target.ndim == 0:
        return np.asarray(target, dtype=dtype)
    return target.astype(dtype)


def make_probability_target(rng, layout: Layout, dtype=np.float64) -> np.ndarray:
    y = ref.softmax(rng.standard_normal(layout.shape) * 2.0, axis=layout.class_axis)
    return y.astype(dtype)


def loss_kwargs(rng, layout: Layout, options: Options, dtype) -> dict:
    """Keyword arguments shared by fastxent and the reference."""
    weight = make_weight(rng, layout.num_classes, dtype) if options.weight else None
    return dict(
        weight=weight,
        axis=layout.axis,
        ignore_index=options.ignore_index,
        label_smoothing=options.label_smoothing,
    )


def upcast(value):
    """Float arrays to float64 (the reference's input); anything else unchanged."""
    if value is None:
        return None
    a = np.asarray(value)
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    return value


def upcast_kwargs(kwargs: dict) -> dict:
    return {k: (upcast(v) if k in ("weight", "grad_output") else v) for k, v in kwargs.items()}


def count_rows(layout: Layout) -> int:
    return int(np.prod(layout.row_shape, dtype=np.int64))


def assert_close(got, expected, dtype, *, terms: int = 1, shape=None) -> None:
    """``got`` has ``dtype`` and the shape of ``expected``, and is within SPEC's tolerance of it."""
    got_array = np.asarray(got)
    expected = np.asarray(expected)
    assert got_array.dtype == np.dtype(dtype), f"dtype {got_array.dtype}, expected {np.dtype(dtype)}"
    assert got_array.shape == (expected.shape if shape is None else shape)
    np.testing.assert_allclose(
        got_array.astype(np.float64), expected, equal_nan=True, **tolerance(dtype, terms)
    )


def assert_loss_close(got, expected, dtype, reduction: str, rows: int) -> None:
    """A loss: NumPy scalar of ``dtype`` for mean/sum, array for none; within tolerance."""
    if reduction == "none":
        assert isinstance(got, np.ndarray), f"expected an ndarray, got {type(got)}"
        assert_close(got, expected, dtype)
    else:
        assert isinstance(got, np.generic), f"expected a NumPy scalar, got {type(got)}"
        assert got.dtype == np.dtype(dtype), f"dtype {got.dtype}, expected {np.dtype(dtype)}"
        assert_close(got, expected, dtype, terms=rows if reduction == "sum" else 1)
