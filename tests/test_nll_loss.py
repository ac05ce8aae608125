"""nll_loss against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import (
    FLOAT_DTYPES,
    IGNORED_CLASS,
    INDEX_DTYPES,
    LAYOUTS,
    OTHER_AXES,
    REDUCTIONS,
    Layout,
    Options,
    assert_loss_close,
    count_rows,
    make_index_target,
    make_logits,
    make_weight,
    upcast,
)

NLL_OPTIONS = [
    pytest.param(Options(), id="plain"),
    pytest.param(Options(weight=True), id="weight"),
    pytest.param(Options(ignore_some_rows=True), id="ignore"),
    pytest.param(
        Options(weight=True, ignore_index=IGNORED_CLASS, ignore_some_rows=True), id="weight+ignore-real-class"
    ),
]


def make_log_probs(rng, layout: Layout, dtype):
    return ref.log_softmax(make_logits(rng, layout.shape), axis=layout.class_axis).astype(dtype)


def check_nll(log_probs, target, reduction, rows, weight=None, dtype=None, **kwargs):
    dtype = np.asarray(log_probs).dtype if dtype is None else dtype
    got = fx.nll_loss(log_probs, target, weight, reduction=reduction, **kwargs)
    expected = ref.nll_loss(upcast(log_probs), target, upcast(weight), reduction=reduction, **kwargs)
    assert_loss_close(got, expected, dtype, reduction, rows)
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", NLL_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_matches_reference(rng, layout, options, reduction, dtype):
    log_probs = make_log_probs(rng, layout, dtype)
    target = make_index_target(rng, layout, options)
    weight = make_weight(rng, layout.num_classes, dtype) if options.weight else None
    got = check_nll(
        log_probs,
        target,
        reduction,
        count_rows(layout),
        weight,
        axis=layout.axis,
        ignore_index=options.ignore_index,
    )
    if reduction == "none":
        assert got.shape == layout.row_shape


@pytest.mark.parametrize("target_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_integer_target_dtypes(rng, reduction, target_dtype):
    layout = Layout((8, 5, 3), None)
    log_probs = make_log_probs(rng, layout, np.float32)
    target = make_index_target(rng, layout, Options(ignore_index=IGNORED_CLASS, ignore_some_rows=True))
    narrow = target.astype(target_dtype)
    got = check_nll(log_probs, narrow, reduction, 24, ignore_index=IGNORED_CLASS)
    np.testing.assert_array_equal(
        got, fx.nll_loss(log_probs, target, reduction=reduction, ignore_index=IGNORED_CLASS)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16_inputs(rng, reduction):
    layout = Layout((6, 7, 2), None)
    log_probs = make_log_probs(rng, layout, np.float16)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    got = check_nll(log_probs, target, reduction, 12, dtype=np.float16)
    assert np.asarray(got).dtype == np.float16


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_any_memory_layout(rng, reduction):
    layout = Layout((9, 13, 4), None)
    log_probs = make_log_probs(rng, layout, np.float32)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    weight = make_weight(rng, 13, np.float32)
    for variant in (np.asfortranarray(log_probs), np.ascontiguousarray(log_probs[::-1])[::-1]):
        check_nll(variant, np.asfortranarray(target), reduction, 36, weight[::-1].copy()[::-1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nll_of_log_softmax_is_cross_entropy(rng, dtype, reduction):
    layout = Layout((20, 11), None)
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    weight = make_weight(rng, 11, dtype)
    assert_loss_close(
        fx.nll_loss(fx.log_softmax(x, axis=1), target, weight, reduction=reduction),
        upcast(fx.cross_entropy(x, target, weight, reduction=reduction)),
        dtype,
        reduction,
        20,
    )


def test_nll_loss_takes_the_values_as_given(rng):
    # No softmax inside: arbitrary values are picked, negated and weighted.
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(fx.nll_loss(values, np.array([2, 0]), reduction="none"), [-3.0, -4.0])
    np.testing.assert_array_equal(
        fx.nll_loss(values, np.array([2, 0]), np.array([1.0, 1.0, 0.5])), -5.5 / 1.5
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_row_ignored(rng, reduction):
    log_probs = make_log_probs(rng, Layout((4, 5), None), np.float32)
    got = fx.nll_loss(log_probs, np.full(4, -100), reduction=reduction)
    expected = {"mean": np.nan, "sum": 0.0, "none": np.zeros(4)}[reduction]
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float32))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction):
    got = fx.nll_loss(np.zeros((0, 5), dtype=np.float32), np.zeros(0, dtype=np.int64), reduction=reduction)
    expected = {"mean": np.nan, "sum": 0.0, "none": np.zeros(0)}[reduction]
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float32))


@pytest.mark.parametrize("shape,axis", [((100_000, 3), 1), ((3, 4, 20_000), 1), ((30_001, 2, 3), 1)])
def test_many_rows_in_blocks(rng, restore_num_threads, shape, axis):
    """Many rows are summed in blocks spread over threads (block boundaries inside an outer position
    of the layouts with the class axis not last): every row loss is -w[t] * log_probs[t] rounded
    once, the sum is the float64 sum to float32 rounding, and neither depends on the thread count."""
    log_probs = (-3.0 * rng.random(shape)).astype(np.float32)
    classes = shape[axis]
    row_shape = shape[:axis] + shape[axis + 1 :]
    target = rng.integers(0, classes, row_shape)
    target.reshape(-1)[::7] = -100
    weight = rng.uniform(0.5, 2.0, classes).astype(np.float32)
    picked = np.take_along_axis(log_probs, np.expand_dims(np.maximum(target, 0), axis), axis).squeeze(axis)
    expected_rows = np.where(target != -100, -weight[np.maximum(target, 0)].astype(np.float64) * picked, 0.0)
    results = {}
    for threads in (1, 2):
        fx.set_num_threads(threads)
        rows = fx.nll_loss(log_probs, target, weight, axis=axis, reduction="none")
        np.testing.assert_array_equal(rows, expected_rows.astype(np.float32))
        results[threads] = [fx.nll_loss(log_probs, target, weight, axis=axis, reduction=r) for r in ("sum", "mean")]
    assert [r.tobytes() for r in results[1]] == [r.tobytes() for r in results[2]]
    total = float(np.sum(expected_rows))
    kept = target != -100
    denominator = float(np.sum(weight[target[kept]].astype(np.float64)))
    np.testing.assert_allclose(results[1][0], total, rtol=2**-24)
    np.testing.assert_allclose(results[1][1], total / denominator, rtol=2**-24)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(37, 11), (0, 7), (40_000, 3)], ids=["37x11", "empty", "40000x3"])
def test_fast_path_gives_the_general_paths_bits(rng, shape, dtype):
    """The common call (C-contiguous (N, C) log-probabilities, a 1-D integer array of targets, default
    options) is taken by _core directly; targets given as a memoryview take the general path."""
    from fastxent import _core

    log_probs = (-3.0 * rng.random(shape)).astype(dtype)
    target = rng.integers(0, shape[1], shape[0])
    target[::4] = -100
    for reduction, code in [("none", 0), ("mean", 1), ("sum", 2)]:
        assert _core.nll_loss_fast(log_probs, target, -100, code) is not None
        fast = fx.nll_loss(log_probs, target, reduction=reduction)
        general = fx.nll_loss(log_probs, memoryview(target), reduction=reduction)
        assert type(fast) is type(general) and np.asarray(fast).dtype == dtype
        np.testing.assert_array_equal(fast, general)
        expected = ref.nll_loss(upcast(log_probs), target, reduction=reduction)
        assert_loss_close(fast, expected, dtype, reduction, shape[0])
