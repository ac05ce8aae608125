"""fastxent against torch.nn.functional and autograd, where torch is installed.

Two comparisons per case: against torch in the input's own dtype (loosely in
float32, where torch itself rounds), and against torch in float64 on the same
values (SPEC's per-element tolerance). Where SPEC deliberately differs from
PyTorch, the difference is asserted here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastxent as fx  # noqa: E402
import torch_ref  # noqa: E402
from cases import (  # noqa: E402
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
    count_rows,
    loss_kwargs,
    make_grad_output,
    make_index_target,
    make_infinite_weight_case,
    make_logits,
    make_probability_target,
    make_weight,
    tolerance,
    upcast,
    upcast_kwargs,
)

# torch's own float32 results carry float32 rounding of their own.
SAME_DTYPE_TOLERANCE = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def compare(got, torch_same_dtype, torch_float64, dtype, terms=1):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == np.shape(torch_same_dtype)
    np.testing.assert_allclose(got, torch_same_dtype, equal_nan=True, **SAME_DTYPE_TOLERANCE[np.dtype(dtype)])
    np.testing.assert_allclose(got, torch_float64, equal_nan=True, **tolerance(dtype, terms))


def check_against_torch(x, target, *, reduction, grad_output, rows, **kwargs):
    dtype = x.dtype
    loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=grad_output, **kwargs)
    same_loss, same_grad = torch_ref.cross_entropy_with_grad(
        x, target, reduction=reduction, grad_output=grad_output, **kwargs
    )
    wide_loss, wide_grad = torch_ref.cross_entropy_with_grad(
        upcast(x),
        upcast(target),
        reduction=reduction,
        grad_output=upcast(grad_output),
        **upcast_kwargs(kwargs),
    )
    compare(loss, same_loss, wide_loss, dtype, terms=rows if reduction == "sum" else 1)
    compare(grad, same_grad, wide_grad, dtype)
    compare(
        fx.cross_entropy(x, target, reduction=reduction, **kwargs),
        same_loss,
        wide_loss,
        dtype,
        terms=rows if reduction == "sum" else 1,
    )
    compare(
        fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=grad_output, **kwargs),
        same_grad,
        wide_grad,
        dtype,
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", INDEX_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES[2:6])
def test_cross_entropy_index_targets(rng, layout, options, reduction, per_sample, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    g = make_grad_output(rng, layout, per_sample)
    check_against_torch(x, target, reduction=reduction, grad_output=g, rows=count_rows(layout), **kwargs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", PROBABILITY_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES[2:6])
def test_cross_entropy_probability_targets(rng, layout, options, reduction, per_sample, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_probability_target(rng, layout, dtype)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    g = make_grad_output(rng, layout, per_sample)
    check_against_torch(x, target, reduction=reduction, grad_output=g, rows=count_rows(layout), **kwargs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weight_ignore_index_and_label_smoothing_together_on_many_rows(rng, reduction, dtype):
    layout = Layout((512, 37, 3), None)
    options = Options(weight=True, ignore_some_rows=True, label_smoothing=0.2)
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    check_against_torch(x, target, reduction=reduction, grad_output=1.0, rows=count_rows(layout), **kwargs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_row_ignored_and_empty_batch(rng, reduction, dtype):
    x = make_logits(rng, (5, 4), dtype)
    check_against_torch(
        x, np.full(5, -100), reduction=reduction, grad_output=1.0, rows=5, label_smoothing=0.1
    )
    empty = np.zeros((0, 4), dtype=dtype)
    check_against_torch(empty, np.zeros(0, dtype=np.int64), reduction=reduction, grad_output=1.0, rows=0)
    no_classes = np.zeros((3, 0), dtype=dtype)
    check_against_torch(no_classes, np.zeros((3, 0), dtype=dtype), reduction=reduction, grad_output=1.0, rows=3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_kept_rows_whose_classes_weigh_nothing(rng, label_smoothing, reduction, dtype):
    """D = 0 with every row kept: torch's losses (a NaN mean, whatever the smoothing adds); for the
    mean, SPEC's zero gradient where torch's is NaN."""
    x = make_logits(rng, (6, 3), dtype)
    target = np.array([0, 0, 2, 2, 0, 2])
    weight = np.array([0.0, 1.0, 0.0], dtype)
    loss, grad = fx.cross_entropy_with_grad(x, target, weight, reduction=reduction, label_smoothing=label_smoothing)
    same_loss, same_grad = torch_ref.cross_entropy_with_grad(
        x, target, weight, reduction=reduction, label_smoothing=label_smoothing
    )
    wide_loss, wide_grad = torch_ref.cross_entropy_with_grad(
        upcast(x), target, upcast(weight), reduction=reduction, label_smoothing=label_smoothing
    )
    compare(loss, same_loss, wide_loss, dtype, terms=6)
    if reduction == "mean":
        assert np.isnan(loss) and np.all(np.isnan(wide_grad)) and np.all(grad == 0)
    else:
        compare(grad, same_grad, wide_grad, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_and_huge_logits(rng, reduction, dtype):
    x = make_logits(rng, (16, 9), dtype)
    target = make_index_target(rng, Layout((16, 9), None))
    x[:, 7:] = -np.inf
    target = target % 7
    check_against_torch(x, target, reduction=reduction, grad_output=1.0, rows=16)
    huge = (rng.choice([-1e4, 1e4], size=(16, 9)) + rng.standard_normal((16, 9))).astype(dtype)
    check_against_torch(huge, target, reduction=reduction, grad_output=1.0, rows=16, label_smoothing=0.1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("shape", [(64, 5), (4, 3000), (2, 150_001), (3, 300, 2)])
def test_infinite_class_weight_at_the_row_max(rng, shape, probabilities, reduction, dtype):
    """torch's +inf rows (and NaN mean, inf / inf) where the infinite weight's class holds the max."""
    x, target, weight, options = make_infinite_weight_case(rng, shape, probabilities, dtype)
    rows = count_rows(Layout(shape, None))
    check_against_torch(x, target, reduction=reduction, grad_output=1.0, rows=rows, weight=weight, **options)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_softmax_family(rng, function, layout, dtype):
    x = make_logits(rng, layout.shape, dtype)
    axis = layout.class_axis
    got = getattr(fx, function)(x, axis=axis)
    compare(
        got,
        getattr(torch_ref, function)(x, axis=axis),
        getattr(torch_ref, function)(upcast(x), axis=axis),
        dtype,
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family_infinities_and_nan(function, dtype):
    x = np.tile(np.linspace(-2.0, 3.0, 20), (6, 1)).astype(dtype)
    x[0, :] = -np.inf
    x[1, 1] = -np.inf
    x[2, 2] = np.inf
    x[3, 0] = np.nan
    x[4, ::2] = -np.inf
    got = getattr(fx, function)(x, axis=1)
    compare(
        got, getattr(torch_ref, function)(x, axis=1), getattr(torch_ref, function)(upcast(x), axis=1), dtype
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [o for o in INDEX_OPTIONS if o.values[0].label_smoothing == 0])
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES[2:6])
def test_nll_loss(rng, layout, options, reduction, dtype):
    log_probs = fx.log_softmax(make_logits(rng, layout.shape, dtype), axis=layout.class_axis)
    target = make_index_target(rng, layout, options)
    weight = make_weight(rng, layout.num_classes, dtype) if options.weight else None
    kwargs = dict(axis=layout.axis, ignore_index=options.ignore_index, reduction=reduction)
    got = fx.nll_loss(log_probs, target, weight, **kwargs)
    compare(
        got,
        torch_ref.nll_loss(log_probs, target, weight, **kwargs),
        torch_ref.nll_loss(upcast(log_probs), target, upcast(weight), **kwargs),
        dtype,
        terms=count_rows(layout) if reduction == "sum" else 1,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16_is_as_close_as_torch_in_float32(rng, reduction):
    layout = Layout((32, 11), None)
    x = make_logits(rng, layout.shape, np.float16)
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction, label_smoothing=0.1)
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(
        x.astype(np.float32), target, reduction=reduction, label_smoothing=0.1
    )
    assert_close(loss, expected_loss, np.float16)
    assert_close(grad, expected_grad, np.float16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    "shape,axis",
    [((3, 5), 1), ((300, 5), 1), ((3, 1000), 1), ((2, 300000), 1), ((4, 5, 7), 1), ((4, 5, 4096), 1), ((0, 5), 1),
     ((3, 0), 1), ((6, 20), 0)],
)
def test_a_zero_loss_of_probability_targets_has_torchs_sign(shape, axis, weighted, dtype):
    """PyTorch's loss of probability targets is a negated sum, so that each zero it gives is -0 (row
    losses, sums and means alike): all-zero targets, and one-hot targets whose class holds all the
    probability (a log-probability of exactly 0). Rows, tiles, split rows and inner axes alike."""
    for one_hot in (False, True):
        x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
        target = np.zeros(shape, dtype)
        if one_hot and 0 not in shape:
            first = (slice(None),) * axis + (0,)
            x[first] = 100
            target[first] = 1
        moved_x = torch.from_numpy(np.moveaxis(x, axis, 1).astype(np.float32 if dtype == np.float16 else dtype))
        moved_target = torch.from_numpy(np.moveaxis(target, axis, 1).astype(moved_x.numpy().dtype))
        weight = np.linspace(0.5, 2.0, shape[axis]).astype(dtype) if weighted else None
        torch_weight = None if weight is None else torch.from_numpy(weight.astype(moved_x.numpy().dtype))
        for reduction in REDUCTIONS:
            kwargs = dict(weight=weight, axis=axis, reduction=reduction)
            want = torch.nn.functional.cross_entropy(moved_x, moved_target, torch_weight, reduction=reduction).numpy()
            got = [
                fx.cross_entropy(x, target, **kwargs),
                fx.cross_entropy_with_grad(x, target, **kwargs)[0],
                fx.CrossEntropyLoss(**{k: v for k, v in kwargs.items() if k != "reduction"}, reduction=reduction)(
                    x, target
                ),
            ]
            for value in got:
                value = np.asarray(value)
                assert np.all(value[~np.isnan(value)] == 0)
                np.testing.assert_array_equal(value.astype(np.float64), want.astype(np.float64))
                zero = want == 0
                np.testing.assert_array_equal(np.signbit(value[zero]), np.signbit(want[zero]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((3, 1), 1), ((3, 5), 1), ((3, 1000), 1), ((2, 300000), 1), ((4, 5, 7), 1)])
def test_a_zero_smoothed_loss_of_class_indices_has_torchs_sign(shape, axis, dtype):
    """With label smoothing, PyTorch's row loss adds -(sum_c w_c log p_c), a negated sum whose zero
    is -0, to -w_t log p_t: rows whose class holds all the probability (a log-probability of exactly
    0, and a single class) with class weights of 0 or 1 give -0, an ignored row +0."""
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    x[(slice(None),) * axis + (0,)] = 100
    target = np.zeros(shape[:axis] + shape[axis + 1 :], np.int64)
    target.reshape(-1)[-1] = -100
    moved_x = torch.from_numpy(np.moveaxis(x, axis, 1).copy())
    for weight in (np.zeros(shape[axis], dtype), np.ones(shape[axis], dtype)):
        want = torch.nn.functional.cross_entropy(
            moved_x, torch.from_numpy(target), torch.from_numpy(weight), reduction="none", label_smoothing=0.2
        ).numpy()
        kwargs = dict(weight=weight, axis=axis, reduction="none", label_smoothing=0.2)
        for got in (
            fx.cross_entropy(x, target, **kwargs),
            fx.cross_entropy_with_grad(x, target, **kwargs)[0],
            fx.CrossEntropyLoss(weight, axis=axis, reduction="none", label_smoothing=0.2)(x, target),
        ):
            zero = want == 0
            assert zero.all() or shape[axis] > 1 and weight[0] == 1  # unit weights: sum_c x_c - max > 0
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
            assert np.signbit(got.reshape(-1)[:-1][zero.reshape(-1)[:-1]]).all() and not np.signbit(got.reshape(-1)[-1])


# ---------------------------------------------------------------------------
# where SPEC deliberately differs from PyTorch
# ---------------------------------------------------------------------------


def test_negative_label_smoothing_raises_where_torch_treats_it_as_zero(rng):
    x = make_logits(rng, (4, 5))
    target = np.array([0, 1, 2, 3])
    torch_negative, _ = torch_ref.cross_entropy_with_grad(x, target, label_smoothing=-0.1)
    torch_zero, _ = torch_ref.cross_entropy_with_grad(x, target)
    assert torch_negative == torch_zero
    with pytest.raises(ValueError):
        fx.cross_entropy(x, target, label_smoothing=-0.1)


@pytest.mark.parametrize("target_dtype", [np.int32, np.int16, np.int8, np.uint16])
def test_integer_targets_torch_refuses(rng, target_dtype):
    x = make_logits(rng, (6, 5))
    target = np.array([0, 1, 2, 3, 4, 0])
    with pytest.raises(RuntimeError):
        torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(target.astype(target_dtype)))
    expected, _ = torch_ref.cross_entropy_with_grad(x, target, reduction="none")
    np.testing.assert_allclose(
        fx.cross_entropy(x, target.astype(target_dtype), reduction="none"), expected, rtol=1e-12, atol=1e-12
    )


# Shapes that take each of the kernels' strategies: transposed tiles of a few classes, rows, one
# row's classes split across threads, and tiles along an inner axis.
NON_FINITE_LAYOUTS = [
    pytest.param(Layout((300, 5), None), id="300x5"),
    pytest.param(Layout((6, 300), None), id="6x300"),
    pytest.param(Layout((2, 300_000), None), id="2x300000"),
    pytest.param(Layout((3, 4, 150), None), id="3x4x150"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("grad_output", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(Options(), id="plain"),
        pytest.param(Options(weight=True, ignore_some_rows=True), id="weight-ignore"),
        pytest.param(Options(label_smoothing=0.1), id="smoothing"),
    ],
)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("layout", NON_FINITE_LAYOUTS)
def test_non_finite_grad_output_gives_torchs_infinities_and_nans(
    rng, layout, probabilities, options, reduction, grad_output, dtype
):
    """An infinite or NaN grad_output: where torch's gradient is inf, -inf or NaN, so is ours."""
    if probabilities:
        # ignore_index does not apply to probability targets: weights alone.
        options = dataclasses.replace(options, ignore_some_rows=False)
    x = make_logits(rng, layout.shape, dtype)
    # A masked logit in the first row: p = 0 there, and 0 * inf is NaN in torch's gradient.
    x.reshape(-1)[1] = -np.inf
    target = make_probability_target(rng, layout, dtype) if probabilities else make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    if reduction == "none":
        # Half the rows get the non-finite value, the others a plain one.
        g = np.where(rng.random(layout.row_shape) < 0.5, grad_output, 1.5).astype(dtype)
    else:
        g = grad_output
    expected = torch_ref.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=g, **kwargs)[1]
    # The finite elements against torch in float64 (torch's float32 rounds on 300000 classes).
    wide = torch_ref.cross_entropy_with_grad(
        upcast(x), upcast(target), reduction=reduction, grad_output=upcast(g), **upcast_kwargs(kwargs)
    )[1]
    got = [
        fx.cross_entropy_with_grad(x, target, reduction=reduction, grad_output=g, **kwargs)[1],
        fx.cross_entropy_grad(x, target, reduction=reduction, grad_output=g, **kwargs),
    ]
    weight = kwargs.pop("weight")
    criterion = fx.CrossEntropyLoss(weight, reduction=reduction, **kwargs)
    criterion(x, target)
    got.append(criterion.backward(g))
    for grad in got:
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected))
        np.testing.assert_array_equal(np.isposinf(grad), np.isposinf(expected))
        np.testing.assert_array_equal(np.isneginf(grad), np.isneginf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(grad[finite], wide[finite], **tolerance(dtype))
