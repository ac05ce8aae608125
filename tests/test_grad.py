"""Gradients: cross_entropy_grad, cross_entropy_with_grad and CrossEntropyLoss.backward."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
import reference as ref
from cases import (
    FLOAT_DTYPES,
    GRAD_MODES,
    INDEX_OPTIONS,
    LAYOUTS,
    OTHER_AXES,
    PROBABILITY_OPTIONS,
    REDUCTIONS,
    Layout,
    Options,
    assert_close,
    assert_loss_close,
    count_rows,
    loss_kwargs,
    make_grad_output,
    make_index_target,
    make_logits,
    make_probability_target,
    upcast,
    upcast_kwargs,
)

APIS = ["cross_entropy_grad", "cross_entropy_with_grad", "CrossEntropyLoss"]
# The whole layout grid for cross_entropy_grad; the two other ways in share its
# code path, so they get SPEC's shape table only.
API_LAYOUTS = [
    pytest.param(api, case.values[0], id=f"{api}-{case.id}")
    for api in APIS
    for case in (LAYOUTS + OTHER_AXES if api == "cross_entropy_grad" else LAYOUTS)
]


def loss_and_grad(api, x, target, *, reduction, grad_output, **kwargs):
    """(loss or None, grad) through one of the three public ways to get a gradient."""
    if api == "cross_entropy_grad":
        return None, fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=grad_output, **kwargs)
    if api == "cross_entropy_with_grad":
        return fx.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=grad_output, **kwargs)
    weight = kwargs.pop("weight", None)
    criterion = fx.CrossEntropyLoss(weight, reduction=reduction, **kwargs)
    loss = criterion(x, target)
    return loss, criterion.backward(grad_output)


def check_grad(api, x, target, *, reduction, grad_output, rows, dtype=None, **kwargs):
    dtype = np.asarray(x).dtype if dtype is None else dtype
    loss, grad = loss_and_grad(api, x, target, reduction=reduction, grad_output=grad_output, **kwargs)
    ref_kwargs = upcast_kwargs(kwargs)
    expected_grad = ref.cross_entropy_grad(
        upcast(x), upcast(target), reduction=reduction, grad_output=upcast(grad_output), **ref_kwargs
    )
    assert isinstance(grad, np.ndarray)
    assert grad.flags.c_contiguous
    assert_close(grad, expected_grad, dtype, shape=np.shape(x))
    if loss is not None:
        expected_loss = ref.cross_entropy(upcast(x), upcast(target), reduction=reduction, **ref_kwargs)
        assert_loss_close(loss, expected_loss, dtype, reduction, rows)
    return grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", INDEX_OPTIONS)
@pytest.mark.parametrize("api,layout", API_LAYOUTS)
def test_index_targets(rng, api, layout, options, reduction, per_sample, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    g = make_grad_output(rng, layout, per_sample)
    check_grad(api, x, target, reduction=reduction, grad_output=g, rows=count_rows(layout), **kwargs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", PROBABILITY_OPTIONS)
@pytest.mark.parametrize("api,layout", API_LAYOUTS)
def test_probability_targets(rng, api, layout, options, reduction, per_sample, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_probability_target(rng, layout, dtype)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    g = make_grad_output(rng, layout, per_sample)
    check_grad(api, x, target, reduction=reduction, grad_output=g, rows=count_rows(layout), **kwargs)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_default_grad_output_is_one(rng, api, reduction):
    layout = Layout((6, 9), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout)
    expected = ref.cross_entropy_grad(x, target, reduction=reduction)
    if api == "cross_entropy_grad":
        got = fx.cross_entropy_grad(x, target, reduction=reduction)
    elif api == "cross_entropy_with_grad":
        got = fx.cross_entropy_with_grad(x, target, reduction=reduction)[1]
    else:
        criterion = fx.CrossEntropyLoss(reduction=reduction)
        criterion(x, target)
        got = criterion.backward()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_per_sample_grad_output_of_any_float_dtype(rng, dtype, grad_dtype):
    layout = Layout((5, 7, 3), None)
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout)
    g = make_grad_output(rng, layout, per_sample=True).astype(grad_dtype)
    for api in APIS:
        check_grad(api, x, target, reduction="none", grad_output=g, rows=15)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_grad_output_scales_the_gradient(rng, reduction):
    layout = Layout((6, 9), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    one = fx.cross_entropy_grad(x, target, reduction=reduction)
    np.testing.assert_allclose(
        fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=-2.5), -2.5 * one, rtol=1e-12
    )
    np.testing.assert_array_equal(
        fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=0.0), 0.0 * one
    )


def test_per_sample_grad_output_scales_each_row(rng):
    layout = Layout((4, 6), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout)
    g = np.array([1.0, 0.0, -3.0, 0.5])
    one = fx.cross_entropy_grad(x, target, reduction="none")
    np.testing.assert_allclose(
        fx.cross_entropy_grad(x, target, reduction="none", grad_output=g), g[:, None] * one, rtol=1e-12
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rows_of_an_unsmoothed_unweighted_gradient_sum_to_zero(rng, dtype):
    layout = Layout((50, 33), None)
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout)
    grad = fx.cross_entropy_grad(x, target, reduction="sum")
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=40 * np.finfo(dtype).eps)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_with_grad_loss_equals_cross_entropy(rng, dtype, reduction):
    layout = Layout((40, 37), None)
    x = make_logits(rng, layout.shape, dtype)
    options = Options(weight=True, ignore_some_rows=True, label_smoothing=0.1)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction, **kwargs)
    assert_loss_close(
        loss, upcast(fx.cross_entropy(x, target, reduction=reduction, **kwargs)), dtype, reduction, 40
    )
    assert_close(grad, upcast(fx.cross_entropy_grad(x, target, reduction=reduction, **kwargs)), dtype)


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_out_is_filled_and_returned(rng, api, dtype):
    layout = Layout((4, 11, 3), None)
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout)
    out = np.full(layout.shape, np.nan, dtype=dtype)
    result = getattr(fx, api)(x, target, reduction="sum", out=out)
    grad = result[1] if api == "cross_entropy_with_grad" else result
    assert grad is out
    assert_close(out, ref.cross_entropy_grad(upcast(x), target, reduction="sum"), dtype)


# The common call (a C-contiguous (N, C) float32/float64 array, a 1-D integer array of targets, every
# option at its default, a plain number as grad_output) is taken by _core directly, by the functions
# and by the loss class; targets given as a memoryview take the general path through the Python
# layer. Both must give the same bits.
@pytest.mark.parametrize("out", ["new", "out", "in-place"])
@pytest.mark.parametrize("grad_output", [1.0, 3, -0.25])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37, 11), (5, 3000), (0, 7)], ids=["37x11", "5x3000", "empty"])
def test_fast_path_gives_the_general_paths_bits(rng, shape, dtype, reduction, grad_output, out):
    from fastxent import _core

    x = make_logits(rng, shape, dtype)
    target = rng.integers(0, shape[1], shape[0])
    target[::4] = -100
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    assert _core.cross_entropy_fast_with(x, target, -100, code, 1.0, True, True, None, None, None) is not None
    assert _core.cross_entropy_fast_with(x, memoryview(target), -100, code, 1.0, True, True, None, None, None) is None
    for api in ["cross_entropy_grad", "cross_entropy_with_grad", "CrossEntropyLoss"]:
        results = []
        for t in (target.copy(), memoryview(target.copy())):
            logits = x.copy()
            buffer = {"new": None, "out": np.full(shape, np.nan, dtype), "in-place": logits}[out]
            if api == "CrossEntropyLoss":
                criterion = fx.CrossEntropyLoss(reduction=reduction)
                loss = criterion(logits, t)
                np.asarray(t)[:] = 0  # the criterion keeps its own copy of the targets
                grad = criterion.backward(grad_output, out=buffer)
            else:
                result = getattr(fx, api)(logits, t, reduction=reduction, grad_output=grad_output, out=buffer)
                loss, grad = result if api == "cross_entropy_with_grad" else (None, result)
            assert grad.dtype == dtype and grad.shape == shape and grad.flags.c_contiguous
            assert buffer is None or grad is buffer
            results.append((loss, grad))
        (fast_loss, fast_grad), (general_loss, general_grad) = results
        np.testing.assert_array_equal(fast_grad, general_grad)
        if api != "cross_entropy_grad":
            assert type(fast_loss) is type(general_loss)
            assert np.asarray(fast_loss).dtype == dtype
            np.testing.assert_array_equal(fast_loss, general_loss)
    _, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=grad_output)
    expected = ref.cross_entropy_grad(upcast(x), target, reduction=reduction, grad_output=float(grad_output))
    assert_close(grad, expected, dtype)


# Class weights in the common call: a C-contiguous 1-D array of the computed dtype (float32 for
# float32 and 16-bit logits, float64 for float64) is passed to _core as it is; any other weight (a
# list, another dtype, a strided view) takes the general path, which converts it. Same bits.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(37, 11), (5, 3000), (0, 7)], ids=["37x11", "5x3000", "empty"])
def test_weighted_fast_path_gives_the_general_paths_bits(rng, shape, dtype, reduction):
    from fastxent import _core

    x = make_logits(rng, shape, dtype)
    target = rng.integers(0, shape[1], shape[0])
    target[::4] = -100
    compute = np.float64 if dtype == np.float64 else np.float32
    weight = (rng.random(shape[1]) * 2).astype(compute)
    weight[0] = 0.0
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    assert _core.cross_entropy_fast(x, target, -100, code, weight) is not None
    assert _core.nll_loss_fast(x, target, -100, code, weight) is not None
    assert _core.cross_entropy_fast_with(x, target, -100, code, 1.0, True, True, None, None, None, weight) is not None
    other_dtype = weight.astype(np.float64 if compute == np.float32 else np.float32)
    for general in (list(weight), np.repeat(weight, 2)[::2]):  # the general path
        assert _core.cross_entropy_fast(x, target, -100, code, general) is None
    assert _core.cross_entropy_fast(x, target, -100, code, other_dtype) is None
    assert _core.cross_entropy_fast(x, target, -100, code, weight[:-1]) is None
    general = list(weight)
    for api in ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "nll_loss"]:
        fast = getattr(fx, api)(x, target, weight, reduction=reduction)
        slow = getattr(fx, api)(x, target, general, reduction=reduction)
        for a, b in zip(fast if api == "cross_entropy_with_grad" else [fast],
                        slow if api == "cross_entropy_with_grad" else [slow]):
            assert type(a) is type(b)
            np.testing.assert_array_equal(a, b)
    # against the float64 reference
    loss, grad = fx.cross_entropy_with_grad(x, target, weight, reduction=reduction)
    expected = ref.cross_entropy(upcast(x), target, weight.astype(np.float64), reduction=reduction)
    np.testing.assert_allclose(np.asarray(loss, np.float64), expected, rtol=1e-3 if dtype == np.float16 else 1e-6,
                               atol=1e-3 if dtype == np.float16 else 1e-6)
    expected_grad = ref.cross_entropy_grad(upcast(x), target, weight.astype(np.float64), reduction=reduction)
    assert_close(grad, expected_grad, dtype)
    # an out= that overlaps the weights is refused, as on the general path
    if shape[0] > 0 and dtype != np.float16:
        buffer = np.zeros(x.size + shape[1], dtype)
        out, shared_weight = buffer[: x.size].reshape(shape), buffer[x.size - 1 : x.size - 1 + shape[1]]
        shared_weight[:] = weight  # its first element is out's last
        with pytest.raises(ValueError, match="overlap"):
            fx.cross_entropy_grad(x, target, shared_weight, reduction=reduction, out=out)


def _common_call_arrays(rng, shape, dtype, weighted):
    """Logits of (N, C, d1, ...), class indices of (N, d1, ...) with every fifth row ignored, and
    class weights of the computed dtype (or None)."""
    x = make_logits(rng, shape, dtype)
    target = rng.integers(0, shape[1], shape[:1] + shape[2:])
    target.reshape(-1)[::5] = -100
    compute = np.float64 if dtype == np.float64 else np.float32
    weight = (rng.random(shape[1]) + 0.5).astype(compute) if weighted else None
    return x, target, weight


# Logits with more axes, (N, C, d1, ...) C-contiguous with their classes along axis 1 (PyTorch's
# default) and targets of shape (N, d1, ...), take the common call too; axis=1 given explicitly takes
# the general path. Same bits, row losses of the targets' shape.
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(4, 10, 8), (2, 5, 3, 7), (3, 40, 33), (3, 4, 0), (0, 3, 5)],
                         ids=["4x10x8", "2x5x3x7", "3x40x33", "inner-empty", "empty"])
def test_fast_path_of_more_axes_gives_the_general_paths_bits(rng, shape, dtype, reduction, weighted):
    from fastxent import _core

    x, target, weight = _common_call_arrays(rng, shape, dtype, weighted)
    row_shape = target.shape
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    assert _core.cross_entropy_fast(x, target, -100, code, weight) is not None
    assert _core.nll_loss_fast(x, target, -100, code, weight) is not None
    assert _core.cross_entropy_fast(x, target[..., None], -100, code, weight) is None  # not the row shape
    for api in ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "nll_loss"]:
        fast = getattr(fx, api)(x, target, weight, reduction=reduction)
        general = getattr(fx, api)(x, target, weight, axis=1, reduction=reduction)
        pairs = zip(fast, general) if api == "cross_entropy_with_grad" else [(fast, general)]
        for a, b in pairs:
            assert type(a) is type(b) and np.asarray(a).shape == np.asarray(b).shape
            np.testing.assert_array_equal(a, b)
    if reduction == "none":
        assert fx.cross_entropy(x, target, weight, reduction="none").shape == row_shape
    expected_grad = fx.cross_entropy_grad(x, target, weight, axis=1, reduction=reduction)
    out = np.full(shape, np.nan, dtype)
    assert fx.cross_entropy_grad(x, target, weight, reduction=reduction, out=out) is out
    np.testing.assert_array_equal(out, expected_grad)
    logits = x.copy()
    assert fx.cross_entropy_grad(logits, target, weight, reduction=reduction, out=logits) is logits  # in place
    np.testing.assert_array_equal(logits, expected_grad)
    # against the float64 reference
    loss, grad = fx.cross_entropy_with_grad(x, target, weight, reduction=reduction)
    w64 = None if weight is None else weight.astype(np.float64)
    expected = ref.cross_entropy(upcast(x), target, w64, reduction=reduction)
    tolerance = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(np.asarray(loss, np.float64), expected, rtol=tolerance, atol=tolerance)
    assert_close(grad, ref.cross_entropy_grad(upcast(x), target, w64, reduction=reduction), dtype)


# The loss class takes the same common call: class weights of the logits' dtype and (N, C, d1, ...)
# logits, forward and backward through _core, with the general path's bits.
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(33, 10), (4, 10, 8), (2, 5, 3, 7), (3, 4, 0), (0, 3, 5)],
                         ids=["2d", "4x10x8", "2x5x3x7", "inner-empty", "empty"])
def test_loss_class_common_call_with_weights_and_more_axes(rng, monkeypatch, shape, dtype, reduction, weighted):
    from fastxent import _loss

    x, target, weight = _common_call_arrays(rng, shape, dtype, weighted)
    row_shape = target.shape
    expected_loss, expected_grad = fx.cross_entropy_with_grad(x, target, weight, axis=1, reduction=reduction)
    per_row = rng.standard_normal(row_shape) if reduction == "none" else 1.0
    expected_scaled = fx.cross_entropy_grad(x, target, weight, axis=1, reduction=reduction, grad_output=per_row)

    def general(*args, **kwargs):
        raise AssertionError("the common call took the general path")

    criterion = fx.CrossEntropyLoss(weight, reduction=reduction)
    with monkeypatch.context() as patch:
        patch.setattr(_loss, "_prepare", general)
        loss = criterion(x, target)
        assert type(criterion._last[0]) is tuple  # the common call's saved state
        grad = criterion.backward()
    assert type(loss) is type(expected_loss) and np.asarray(loss).shape == np.asarray(expected_loss).shape
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(grad, expected_grad)
    out = np.full(shape, np.nan, dtype)
    assert criterion.backward(out=out) is out
    np.testing.assert_array_equal(out, expected_grad)
    # a per-row grad_output takes the general backward, from the same saved state
    np.testing.assert_array_equal(criterion.backward(per_row), expected_scaled)
    # against the float64 reference
    w64 = None if weight is None else weight.astype(np.float64)
    tolerance = 2e-3 if dtype == np.float16 else 1e-6
    expected = ref.cross_entropy(upcast(x), target, w64, reduction=reduction)
    np.testing.assert_allclose(np.asarray(loss, np.float64), expected, rtol=tolerance, atol=tolerance)
    assert_close(grad, ref.cross_entropy_grad(upcast(x), target, w64, reduction=reduction), dtype)
    # an out= that overlaps the weights is refused, as on the general path
    if weighted and x.size > 0 and dtype != np.float16:
        buffer = np.zeros(x.size + shape[1], dtype)
        shared = buffer[x.size - 1 : x.size - 1 + shape[1]]
        shared[:] = weight
        crit = fx.CrossEntropyLoss(shared, reduction=reduction)
        crit(x, target)
        with pytest.raises(ValueError, match="overlap"):
            crit.backward(out=buffer[: x.size].reshape(shape))


TARGET_LAYOUTS = {
    "int8": lambda t: t.astype(np.int8),
    "int16": lambda t: t.astype(np.int16),
    "int32": lambda t: t.astype(np.int32),
    "uint8": lambda t: t.astype(np.uint8),
    "uint16": lambda t: t.astype(np.uint16),
    "uint32": lambda t: t.astype(np.uint32),
    "uint64": lambda t: t.astype(np.uint64),  # the general path, which checks values beyond int64
    "big-endian-int32": lambda t: t.astype(">i4"),
    "big-endian-int64": lambda t: t.astype(">i8"),
    "strided-int64": lambda t: np.repeat(t, 2)[::2],
    "reversed-int32": lambda t: t[::-1].astype(np.int32)[::-1],
}


@pytest.mark.parametrize("layout", TARGET_LAYOUTS)
def test_targets_of_any_integer_dtype_and_layout_give_the_int64_bits(rng, layout):
    from fastxent import _core

    x = make_logits(rng, (57, 13), np.float32)
    target = rng.integers(0, 13, 57)
    other = TARGET_LAYOUTS[layout](target)
    np.testing.assert_array_equal(other, target)
    fast = _core.cross_entropy_fast_with(x, other, -100, 1, 1.0, True, True, None, None, None)
    assert (fast is None) == (layout == "uint64")
    for reduction in REDUCTIONS:
        loss, grad = fx.cross_entropy_with_grad(x, other, reduction=reduction)
        expected_loss, expected_grad = fx.cross_entropy_with_grad(x, target, reduction=reduction)
        np.testing.assert_array_equal(loss, expected_loss)
        np.testing.assert_array_equal(grad, expected_grad)
        np.testing.assert_array_equal(
            fx.cross_entropy(x, other, reduction=reduction), fx.cross_entropy(x, target, reduction=reduction)
        )
        np.testing.assert_array_equal(fx.cross_entropy_grad(x, other, reduction=reduction), expected_grad)
        criterion = fx.CrossEntropyLoss(reduction=reduction)
        np.testing.assert_array_equal(criterion(x, other), expected_loss)  # its statistics are the gradient's
        np.testing.assert_array_equal(criterion.backward(), expected_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_class_after_a_fast_forward_takes_any_grad_output(rng, dtype):
    """A forward taken by the fast path, then a backward that is not (per-row or NumPy grad_output)."""
    x = make_logits(rng, (40, 9), dtype)
    target = rng.integers(0, 9, 40)
    target[::5] = -100
    per_row = rng.standard_normal(40)
    for grad_output in [per_row, np.float32(-2.5), np.array(0.5)]:
        grads = []
        for t in (target, target.astype(np.int32), memoryview(target)):  # fast, fast with a copy, general
            criterion = fx.CrossEntropyLoss(reduction="none")
            criterion(x, t)
            grads.append(criterion.backward(grad_output))
        np.testing.assert_array_equal(grads[0], grads[1])
        np.testing.assert_array_equal(grads[0], grads[2])
        expected = ref.cross_entropy_grad(upcast(x), target, reduction="none", grad_output=upcast(grad_output))
        assert_close(grads[0], expected, dtype)


@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16_inputs(rng, reduction, probabilities):
    layout = Layout((6, 13, 2), None)
    x = make_logits(rng, layout.shape, np.float16)
    target = (
        make_probability_target(rng, layout, np.float16) if probabilities else make_index_target(rng, layout)
    )
    for api in APIS:
        grad = check_grad(api, x, target, reduction=reduction, grad_output=1.0, rows=12, label_smoothing=0.1)
        assert grad.dtype == np.float16


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((9, 13), None), ((6, 13, 5), None), ((6, 5, 13), -1), ((13, 6), 0)])
def test_any_memory_layout(rng, shape, axis, dtype):
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    variants = [np.asfortranarray(x), np.ascontiguousarray(x[::-1])[::-1]]
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
    wide[..., 1::2] = x
    variants.append(wide[..., 1::2])
    for xv in variants:
        np.testing.assert_array_equal(xv, x)
        grad = check_grad(
            "cross_entropy_grad",
            xv,
            target,
            reduction="mean",
            grad_output=1.0,
            rows=count_rows(layout),
            axis=axis,
            label_smoothing=0.1,
        )
        assert grad.shape == shape


@pytest.mark.parametrize("num_rows", [7, 129, 300])
def test_tiles_of_small_class_counts(rng, num_rows):
    """The gradient of rows of up to 32 classes (64 for float32 with AVX2 and AVX-512) is
    transposed back from tiles in 8 x 8 blocks, whose row vectors run past a row's end: every class
    count on either side of those limits, rows sliced out of wider ones."""
    for num_classes in range(1, 67):
        x = make_logits(rng, (num_rows, num_classes + 3), np.float32)[:, :num_classes]
        layout = Layout((num_rows, num_classes), None)
        target = make_index_target(rng, layout, Options(ignore_some_rows=True))
        check_grad("cross_entropy_with_grad", x, target, reduction="mean", grad_output=1.0, rows=num_rows)


@pytest.mark.parametrize("out", ["new", "out", "in-place"])
@pytest.mark.parametrize("num_classes", [7, 50])
def test_tiles_of_a_large_gradient(rng, num_classes, out):
    """A gradient of small rows of 8 MiB or more is written tile by tile while the next tile's rows
    are prefetched: every row against the reference, the last tile a partial one, the gradient in a
    new array, in ``out``, and over the logits themselves."""
    num_rows = (8 << 20) // (4 * num_classes) + 37
    layout = Layout((num_rows, num_classes), None)
    x = make_logits(rng, layout.shape, np.float32)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    expected = ref.cross_entropy_grad(upcast(x), target)
    if out == "new":
        grad = fx.cross_entropy_grad(x, target)
    else:
        buffer = np.full_like(x, np.nan) if out == "out" else x
        grad = fx.cross_entropy_grad(x, target, out=buffer)
        assert grad is buffer
    assert grad.nbytes >= 8 << 20
    assert_close(grad, expected, np.float32)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize(
    "shape,axis",
    [((300, 1000), None), ((300, 10), None), ((300, 50), None), ((7, 21, 40), None), ((5, 300, 13), -1)],
    ids=["rows", "small-rows", "mid-rows", "class-axis-not-last", "small-rows-3d"],
)
def test_loss_class_backward_is_the_fused_gradient_to_the_last_bit(rng, shape, axis, probabilities, dtype):
    """The loss class saves each row's statistics and makes its gradient from them later; the
    fused call makes its gradient from the exponentials it summed. Both sum the same terms, so
    the two gradients agree exactly, in every kernel layout (whole rows, tiles of small rows,
    tiles along an inner axis)."""
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype, scale=4.0)
    options = Options(weight=True, ignore_some_rows=not probabilities, label_smoothing=0.1)
    target = (
        make_probability_target(rng, layout, dtype)
        if probabilities
        else make_index_target(rng, layout, options)
    )
    kwargs = loss_kwargs(rng, layout, options, dtype)
    for reduction in REDUCTIONS:
        loss, fused = fx.cross_entropy_with_grad(x, target, reduction=reduction, **kwargs)
        weight = kwargs.pop("weight")
        criterion = fx.CrossEntropyLoss(weight, reduction=reduction, **kwargs)
        kwargs["weight"] = weight
        np.testing.assert_array_equal(criterion(x, target), loss)
        np.testing.assert_array_equal(criterion.backward(), fused)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("shape,axis", [((3000, 37), None), ((8, 37, 300), None), ((6, 500, 37), -1)])
def test_many_rows(rng, shape, axis, probabilities, dtype):
    """Large enough to be split between threads."""
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype)
    target = (
        make_probability_target(rng, layout, dtype)
        if probabilities
        else make_index_target(rng, layout, Options(ignore_some_rows=True))
    )
    weight = rng.uniform(0.5, 2.0, 37).astype(dtype)
    for reduction in REDUCTIONS:
        check_grad(
            "cross_entropy_with_grad",
            x,
            target,
            reduction=reduction,
            grad_output=1.0,
            rows=count_rows(layout),
            weight=weight,
            axis=axis,
            label_smoothing=0.05,
        )


class TestCrossEntropyLoss:
    def test_forward_is_call(self, rng):
        x = make_logits(rng, (5, 4))
        target = np.array([0, 1, 2, 3, 0])
        criterion = fx.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
        np.testing.assert_array_equal(criterion.forward(x, target), criterion(x, target))

    def test_backward_refers_to_the_last_call(self, rng):
        first = make_logits(rng, (5, 4))
        second = make_logits(rng, (3, 4))
        criterion = fx.CrossEntropyLoss(reduction="sum")
        criterion(first, np.array([0, 1, 2, 3, 0]))
        criterion(second, np.array([3, 3, 1]))
        np.testing.assert_allclose(
            criterion.backward(),
            ref.cross_entropy_grad(second, np.array([3, 3, 1]), reduction="sum"),
            rtol=1e-12,
        )

    def test_backward_twice_with_different_grad_output(self, rng):
        x = make_logits(rng, (5, 4))
        criterion = fx.CrossEntropyLoss()
        criterion(x, np.array([0, 1, 2, 3, 0]))
        once = criterion.backward(1.0)
        np.testing.assert_allclose(criterion.backward(3.0), 3.0 * once, rtol=1e-12)
        np.testing.assert_allclose(criterion.backward(1.0), once, rtol=1e-12)

    @pytest.mark.parametrize("reuse", ["target"])
    def test_backward_uses_the_values_of_the_last_call_even_if_the_caller_reuses_its_arrays(self, rng, reuse):
        # "backward() returns d loss / d input of the last call": a caller that writes
        # the next batch of class indices into the same buffer before calling backward()
        # still gets the gradient at the targets the loss was computed from. (The logits
        # are kept by reference, as documented: no N x C copy is made.)
        x = make_logits(rng, (5, 4))
        target = np.array([0, 1, 2, 3, 0])
        weight = np.array([1.0, 2.0, 0.5, 1.5])
        criterion = fx.CrossEntropyLoss(weight, reduction="sum", label_smoothing=0.1)
        criterion(x, target)
        expected = ref.cross_entropy_grad(
            x.copy(), target.copy(), weight.copy(), reduction="sum", label_smoothing=0.1
        )
        if reuse == "input":
            x[...] = make_logits(rng, (5, 4), scale=10.0)
        else:
            target[...] = [3, 2, 1, 0, 3]
        np.testing.assert_allclose(criterion.backward(), expected, rtol=1e-12, atol=1e-15)

    def test_options_are_kept(self, rng):
        layout = Layout((4, 6, 5), -1)
        x = make_logits(rng, layout.shape)
        options = Options(weight=True, ignore_index=2, ignore_some_rows=True, label_smoothing=0.25)
        target = make_index_target(rng, layout, options)
        kwargs = loss_kwargs(rng, layout, options, np.float64)
        criterion = fx.CrossEntropyLoss(reduction="sum", **kwargs)
        np.testing.assert_allclose(
            criterion(x, target), ref.cross_entropy(x, target, reduction="sum", **kwargs), rtol=1e-12
        )
        np.testing.assert_allclose(
            criterion.backward(),
            ref.cross_entropy_grad(x, target, reduction="sum", **kwargs),
            rtol=1e-12,
            atol=1e-15,
        )


@st.composite
def problems(draw):
    """A random shape, class axis, target kind and option set."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0 if ndim > 1 else 1, 5), min_size=ndim, max_size=ndim)))
    axis = draw(st.sampled_from([None] + list(range(-ndim, ndim))))
    layout = Layout(shape, axis)
    if layout.num_classes == 0:
        shape = shape[: layout.class_axis] + (3,) + shape[layout.class_axis + 1 :]
        layout = Layout(shape, axis)
    options = Options(
        weight=draw(st.booleans()),
        ignore_index=draw(st.sampled_from([-100, 0, 1])),
        ignore_some_rows=draw(st.booleans()),
        label_smoothing=draw(st.sampled_from([0.0, 0.3, 1.0])),
    )
    reduction = draw(st.sampled_from(REDUCTIONS))
    probabilities = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return layout, options, reduction, probabilities, seed


@settings(max_examples=150, deadline=None)
@given(problems())
def test_random_shapes_axes_and_options(problem):
    layout, options, reduction, probabilities, seed = problem
    rng = np.random.default_rng(seed)
    x = make_logits(rng, layout.shape)
    if probabilities:
        target = make_probability_target(rng, layout)
    else:
        target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, np.float64)
    g = make_grad_output(rng, layout, per_sample=reduction == "none")
    check_grad(
        "cross_entropy_with_grad",
        x,
        target,
        reduction=reduction,
        grad_output=g,
        rows=count_rows(layout),
        **kwargs,
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 0, 1])
@pytest.mark.parametrize("rows", [1, 7, 128, 1000])
def test_two_contiguous_classes_give_the_general_tiles_gradient_bits(rng, rows, ignore_index, reduction, dtype):
    """Two contiguous classes take a loop of their own for the loss and gradient; a strided view of
    the same logits takes the general tiles, and the loss class's backward works from saved
    statistics. All give the same bits (NaN's sign aside), in place too, and the reference's values."""
    x = make_logits(rng, (rows, 2), dtype)
    for row in rng.choice(rows, size=rows // 10, replace=False):
        x[row, rng.integers(0, 2)] = rng.choice([np.inf, -np.inf, np.nan, 1e30, -1e30])
    target = rng.integers(0, 2, rows)
    target[rng.random(rows) < 0.2] = ignore_index
    grad_output = rng.standard_normal(rows).astype(dtype) if reduction == "none" else 0.75
    kwargs = dict(reduction=reduction, ignore_index=ignore_index)
    loss, grad = fx.cross_entropy_with_grad(x, target, grad_output=grad_output, **kwargs)
    padded = np.zeros((rows, 3), dtype)
    padded[:, :2] = x
    general_loss, general_grad = fx.cross_entropy_with_grad(padded[:, :2], target, grad_output=grad_output, **kwargs)
    np.testing.assert_array_equal(loss, general_loss)
    np.testing.assert_array_equal(grad, general_grad)
    np.testing.assert_array_equal(fx.cross_entropy_grad(x, target, grad_output=grad_output, **kwargs), grad)
    in_place = x.copy()
    fx.cross_entropy_with_grad(in_place, target, grad_output=grad_output, out=in_place, **kwargs)
    np.testing.assert_array_equal(in_place, grad)
    criterion = fx.CrossEntropyLoss(**kwargs)
    np.testing.assert_array_equal(criterion(x, target), loss)
    np.testing.assert_array_equal(criterion.backward(grad_output), grad)
    finite = np.isfinite(x).all(axis=1) & (np.abs(x) < 1e29).all(axis=1)
    check_grad(
        "cross_entropy_with_grad",
        x[finite],
        target[finite],
        reduction=reduction,
        grad_output=grad_output[finite] if reduction == "none" else grad_output,
        rows=int(finite.sum()),
        ignore_index=ignore_index,
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [101, 105, 111, 1013, 4105])
def test_whole_rows_ending_in_a_part_of_a_group(rng, classes, dtype):
    """Whole rows whose last elements fill more than half a group of accumulators take them as one
    more, overlapping group (see the Note on a row's last elements): the gradient against the
    reference, written into the logits themselves (out=input) to the same bits, and the loss
    class's backward to the same bits as the fused gradient."""
    rows = 37
    x = make_logits(rng, (rows, classes), dtype, scale=4.0)
    target = rng.integers(0, classes, rows)
    grad = check_grad("cross_entropy_with_grad", x, target, reduction="mean", grad_output=1.0, rows=rows)
    loss = fx.cross_entropy_with_grad(x, target)[0]
    in_place = x.copy()
    loss_in_place, grad_in_place = fx.cross_entropy_with_grad(in_place, target, out=in_place)
    np.testing.assert_array_equal(grad_in_place, grad)
    assert loss_in_place == loss
    criterion = fx.CrossEntropyLoss()
    criterion(x, target)
    np.testing.assert_array_equal(criterion.backward(), grad)
    probabilities = fx.softmax(x)
    np.testing.assert_allclose(probabilities, ref.softmax(x.astype(np.float64)), rtol=1e-5, atol=1e-7)
    in_place = x.copy()
    fx.softmax(in_place, out=in_place)
    np.testing.assert_array_equal(in_place, probabilities)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grad_output_is_any_python_int(rng, reduction):
    """A Python int beyond int64 (which NumPy would make an object array) is the float it rounds to."""
    x = make_logits(rng, (5, 4), np.float64)
    target = np.arange(5) % 4
    for value in [3, 2**70, -(2**64)]:
        np.testing.assert_array_equal(
            fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=value),
            fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=float(value)),
        )
        criterion = fx.CrossEntropyLoss(reduction=reduction)
        criterion(x, target)
        np.testing.assert_array_equal(
            criterion.backward(value), fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=float(value))
        )
