"""Every row of SPEC's error table: the exception type, a message that names the
offending value or shapes, and nothing written to ``out=``."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastxent as fx

C = 13


def call_cross_entropy(x, t, weight=None, **kw):
    return fx.cross_entropy(x, t, weight, **kw)


def call_grad(x, t, weight=None, **kw):
    return fx.cross_entropy_grad(x, t, weight, **kw)


def call_with_grad(x, t, weight=None, **kw):
    return fx.cross_entropy_with_grad(x, t, weight, **kw)


def call_module(x, t, weight=None, **kw):
    return fx.CrossEntropyLoss(weight, **kw)(x, t)


def call_nll_loss(x, t, weight=None, **kw):
    return fx.nll_loss(x, t, weight, **kw)


CROSS_ENTROPY_CALLS = [
    pytest.param(call_cross_entropy, id="cross_entropy"),
    pytest.param(call_grad, id="cross_entropy_grad"),
    pytest.param(call_with_grad, id="cross_entropy_with_grad"),
    pytest.param(call_module, id="CrossEntropyLoss"),
]
LOSS_CALLS = CROSS_ENTROPY_CALLS + [pytest.param(call_nll_loss, id="nll_loss")]
SOFTMAX_FAMILY = ["log_softmax", "softmax", "logsumexp"]


def names_number(message: str, value: int) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(str(value))}(?![\d.])", message) is not None


def names_shape(message: str, shape: tuple) -> bool:
    """The dimensions of ``shape`` appear in order, e.g. "(11, 7)", "[11, 7]" or "11x7"."""
    if shape == ():
        return "()" in message or "scalar" in message or "0-d" in message
    pattern = r"\D{1,3}".join(str(d) for d in shape)
    return re.search(rf"(?<!\d){pattern}(?!\d)", message) is not None


def logits(shape=(6, C), dtype=np.float64):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------
# target out of range: IndexError naming the value and C
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,target_dtype,ignore_index",
    [
        (C, np.int64, -100),
        (17, np.int64, -100),
        (-3, np.int64, -100),
        (-1, np.int32, -100),
        (-100, np.int64, 5),
        (2**40, np.int64, -100),
        (200, np.uint8, -100),
        (300, np.int16, -100),
        (2**63 + 5, np.uint64, -100),
    ],
)
@pytest.mark.parametrize("call", LOSS_CALLS)
def test_target_out_of_range(call, bad, target_dtype, ignore_index):
    target = np.array([0, 1, 2, 3, 4, bad], dtype=target_dtype)
    with pytest.raises(IndexError) as info:
        call(logits(), target, ignore_index=ignore_index)
    message = str(info.value)
    assert names_number(message, bad), message
    assert names_number(message, C), message


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize(
    "shape,target",
    [
        ((C,), np.array(20)),
        ((2, C, 3, 3), np.where(np.arange(18).reshape(2, 3, 3) == 11, 20, 1)),
    ],
    ids=["C", "N,C,d1,d2"],
)
def test_target_out_of_range_in_other_shapes(call, shape, target):
    with pytest.raises(IndexError) as info:
        call(logits(shape), target)
    assert names_number(str(info.value), 20) and names_number(str(info.value), C), str(info.value)


@pytest.mark.parametrize("call", LOSS_CALLS)
def test_target_out_of_range_along_a_last_class_axis(call):
    target = np.ones((3, 4), dtype=np.int64)
    target[2, 3] = C + 1
    with pytest.raises(IndexError) as info:
        call(logits((3, 4, C)), target, axis=-1)
    assert names_number(str(info.value), C + 1) and names_number(str(info.value), C), str(info.value)


@pytest.mark.parametrize("call", LOSS_CALLS)
def test_ignored_targets_may_be_out_of_range(call):
    target = np.array([0, -100, 2, -100, 4, 5])
    call(logits(), target)


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize("threads", [1, 2])
def test_first_invalid_target_of_a_long_array(call, threads, restore_num_threads):
    """Targets are checked in blocks, over threads for long arrays: the error names the first invalid
    target in flat order, wherever the blocks are cut; ignored targets in between change nothing."""
    rows = 100_003
    target = np.arange(rows) % C
    target[::7] = -100
    target[[16_385, 50_000, 99_999]] = [C + 2, -5, C + 9]
    fx.set_num_threads(threads)
    with pytest.raises(IndexError) as info:
        call(logits((rows, C), np.float32), target)
    message = str(info.value)
    assert names_number(message, C + 2) and names_number(message, 16_385), message


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bad", [2**40, -(2**40), 40, -1])
@pytest.mark.parametrize(
    "shape,axis",
    [((1000, 7), -1), ((1000, 32), -1), ((3, 7, 500), 1), ((3, 40, 500), 1)],
    ids=["small-rows", "32-classes", "class-axis-not-last", "40-classes-not-last"],
)
def test_invalid_targets_found_inside_the_loss_kernel(shape, axis, bad, reduction):
    """A loss without a gradient or class weights checks index targets as its tiles read them: the
    error still names the first invalid target in flat order, and nothing is read through any."""
    classes = shape[axis]
    x = logits(shape, np.float32)
    target_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1 :]
    target = (np.arange(np.prod(target_shape)) % classes).reshape(target_shape)
    flat = target.reshape(-1)
    flat[::11] = -100
    first, later = 700, flat.size - 3
    flat[[first, later]] = [bad, classes]
    with pytest.raises(IndexError) as info:
        fx.cross_entropy(x, target, axis=axis, reduction=reduction)
    message = str(info.value)
    assert names_number(message, bad) and names_number(message, first), message
    flat[[first, later]] = 0
    loss = fx.cross_entropy(x, target, axis=axis, reduction=reduction)
    assert np.all(np.isfinite(loss))


@pytest.mark.parametrize("threads", [1, 2])
def test_mean_over_a_long_array_counts_every_kept_row(threads, restore_num_threads):
    rows = 100_003
    x = logits((rows, C), np.float64)
    target = np.arange(rows) % C
    target[::7] = -100
    fx.set_num_threads(threads)
    got = fx.cross_entropy(x, target)
    row_loss = fx.cross_entropy(x, target, reduction="none")
    kept = target != -100
    np.testing.assert_allclose(got, row_loss[kept].sum() / kept.sum(), rtol=1e-12)


# ---------------------------------------------------------------------------
# shape mismatch: ValueError naming both shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize(
    "input_shape,target_shape,axis",
    [
        ((11, 7), (12,), None),
        ((11, 7), (11, 1), None),
        ((11, 7), (7,), None),
        ((4, 7, 3), (4, 5), None),
        ((4, 7, 3), (4, 7), None),
        ((4, 7, 3, 2), (4, 3), None),
        ((9,), (2,), None),
        ((3, 4, 7), (4, 3), -1),
        ((3, 4, 7), (3, 7), -1),
        ((7, 5), (7,), 0),
    ],
)
def test_index_target_shape_mismatch(call, input_shape, target_shape, axis):
    with pytest.raises(ValueError) as info:
        call(logits(input_shape), np.zeros(target_shape, dtype=np.int64), axis=axis)
    message = str(info.value)
    assert names_shape(message, input_shape), message
    assert names_shape(message, target_shape), message


@pytest.mark.parametrize("call", CROSS_ENTROPY_CALLS)
@pytest.mark.parametrize(
    "input_shape,target_shape",
    [((11, 7), (11, 6)), ((11, 7), (7, 11)), ((4, 7, 3), (4, 7)), ((4, 7, 3), (4, 7, 3, 1)), ((9,), (8,))],
)
def test_probability_target_shape_mismatch(call, input_shape, target_shape):
    with pytest.raises(ValueError) as info:
        call(logits(input_shape), np.full(target_shape, 0.1))
    message = str(info.value)
    assert names_shape(message, input_shape), message
    assert names_shape(message, target_shape), message


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize("bad_shape", [(5,), (6, 1), (1, 6)])
def test_per_sample_grad_output_of_the_wrong_shape(api, bad_shape):
    with pytest.raises(ValueError):
        getattr(fx, api)(
            logits(), np.zeros(6, dtype=np.int64), reduction="none", grad_output=np.ones(bad_shape)
        )


def test_per_sample_grad_output_of_the_wrong_shape_in_backward():
    criterion = fx.CrossEntropyLoss(reduction="none")
    criterion(logits(), np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError):
        criterion.backward(np.ones(5))


# ---------------------------------------------------------------------------
# weight, label_smoothing, reduction, axis: ValueError
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize(
    "weight",
    [
        np.ones(C - 1),
        np.ones(C + 1),
        np.ones((C, 1)),
        np.ones((1, C)),
        np.ones((2, C)),
        np.float64(1.0),
        np.ones(0),
    ],
    ids=["short", "long", "column", "row", "2-D", "0-d", "empty"],
)
def test_weight_not_one_dimensional_of_length_c(call, weight):
    with pytest.raises(ValueError):
        call(logits(), np.zeros(6, dtype=np.int64), weight)


@pytest.mark.parametrize("call", CROSS_ENTROPY_CALLS)
@pytest.mark.parametrize("label_smoothing", [-0.1, -1e-12, 1.0 + 1e-9, 1.5, np.nan, np.inf, -np.inf])
def test_label_smoothing_outside_zero_one(call, label_smoothing):
    """Better than PyTorch, which silently treats a negative value as 0."""
    with pytest.raises(ValueError):
        call(logits(), np.zeros(6, dtype=np.int64), label_smoothing=label_smoothing)


def test_label_smoothing_bounds_are_allowed():
    for label_smoothing in (0.0, 1.0):
        fx.cross_entropy(logits(), np.zeros(6, dtype=np.int64), label_smoothing=label_smoothing)


NOT_NUMBERS = ["0.1", b"0.1", True, np.bool_(False), None, [0.1], np.array([0.1]), object(), 10**400]


@pytest.mark.parametrize("call", CROSS_ENTROPY_CALLS)
@pytest.mark.parametrize(
    "option,value",
    [
        pytest.param(option, value, id=f"{option}-{type(value).__name__}")
        for option in ("label_smoothing", "z_loss", "softcap")
        for value in NOT_NUMBERS
        if not (option == "softcap" and value is None)  # softcap's default
    ],
)
def test_numeric_options_must_be_numbers(call, option, value):
    """A string is not parsed, nor a bool taken for 0 or 1: ValueError naming the option."""
    with pytest.raises(ValueError, match=option):
        call(logits(), np.zeros(6, dtype=np.int64), **{option: value})


@pytest.mark.parametrize("value", [0, 0.1, np.float32(0.1), np.float64(0.1), np.int64(0), np.array(0.1)])
def test_numeric_options_take_python_and_numpy_numbers(value):
    x, target = logits(), np.zeros(6, dtype=np.int64)
    expected = fx.cross_entropy(x, target, label_smoothing=float(value), z_loss=float(value))
    assert fx.cross_entropy(x, target, label_smoothing=value, z_loss=value) == expected


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize("reduction", ["avg", "Mean", "", "elementwise_mean"])
def test_unknown_reduction(call, reduction):
    with pytest.raises(ValueError) as info:
        call(logits(), np.zeros(6, dtype=np.int64), reduction=reduction)
    assert reduction in str(info.value)


@pytest.mark.parametrize("call", LOSS_CALLS)
@pytest.mark.parametrize("shape,axis", [((6, C), 2), ((6, C), -3), ((C,), 1), ((C,), -2), ((2, C, 3), 5)])
def test_bad_axis_for_losses(call, shape, axis):
    target = np.zeros((2, 3) if len(shape) == 3 else shape[:1], dtype=np.int64)
    with pytest.raises(ValueError):
        call(logits(shape), target, axis=axis)


@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
@pytest.mark.parametrize("shape,axis", [((6, C), 2), ((6, C), -3), ((C,), 1), ((2, C, 3), -4)])
def test_bad_axis_for_the_softmax_family(function, shape, axis):
    with pytest.raises(ValueError):
        getattr(fx, function)(logits(shape), axis=axis)


# ---------------------------------------------------------------------------
# non-numeric, integer or complex input: TypeError
# ---------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param(lambda shape: np.full(shape, "a"), id="strings"),
    pytest.param(lambda shape: np.full(shape, None, dtype=object), id="objects"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.int64), id="int64"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.int32), id="int32"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.uint8), id="uint8"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.complex128), id="complex128"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.complex64), id="complex64"),
    pytest.param(lambda shape: np.ones(shape, dtype=np.int64).tolist(), id="list-of-ints"),
]


@pytest.mark.parametrize("make", BAD_INPUTS)
@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
def test_non_float_input_to_the_softmax_family(function, make):
    with pytest.raises(TypeError):
        getattr(fx, function)(make((4, 5)))


@pytest.mark.parametrize("make", BAD_INPUTS)
@pytest.mark.parametrize("call", LOSS_CALLS)
def test_non_float_input_to_the_losses(call, make):
    with pytest.raises(TypeError):
        call(make((4, 5)), np.zeros(4, dtype=np.int64))


# ---------------------------------------------------------------------------
# 0-d input: ValueError
# ---------------------------------------------------------------------------

ZERO_D = [
    pytest.param(np.float64(1.5), id="numpy-scalar"),
    pytest.param(np.array(1.5, dtype=np.float32), id="0-d"),
    pytest.param(1.5, id="float"),
]


@pytest.mark.parametrize("x", ZERO_D)
@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
def test_zero_dimensional_input_to_the_softmax_family(function, x):
    with pytest.raises(ValueError):
        getattr(fx, function)(x)


@pytest.mark.parametrize("x", ZERO_D)
@pytest.mark.parametrize("call", LOSS_CALLS)
def test_zero_dimensional_input_to_the_losses(call, x):
    with pytest.raises(ValueError):
        call(x, np.array(0))


# ---------------------------------------------------------------------------
# out=: ValueError and nothing written
# ---------------------------------------------------------------------------

SENTINEL = -12345.0


def bad_outs(shape, dtype):
    """(name, array) of out= arguments that must be refused for a result of ``shape`` and ``dtype``."""
    other = np.float64 if dtype == np.float32 else np.float32
    fortran = np.full(shape, SENTINEL, dtype=dtype, order="F")
    strided = np.full(shape[:-1] + (2 * shape[-1],), SENTINEL, dtype=dtype)[..., ::2]
    read_only = np.full(shape, SENTINEL, dtype=dtype)
    read_only.flags.writeable = False
    return [
        ("transposed-shape", np.full(shape[::-1], SENTINEL, dtype=dtype)),
        ("too-big", np.full((shape[0] + 1,) + shape[1:], SENTINEL, dtype=dtype)),
        ("flat", np.full(int(np.prod(shape)), SENTINEL, dtype=dtype)),
        ("other-dtype", np.full(shape, SENTINEL, dtype=other)),
        ("float16", np.full(shape, SENTINEL, dtype=np.float16)),
        ("fortran-order", fortran),
        ("strided", strided),
        ("read-only", read_only),
    ]


def out_calls(x, target):
    return {
        "log_softmax": lambda out: fx.log_softmax(x, out=out),
        "softmax": lambda out: fx.softmax(x, out=out),
        "cross_entropy_grad": lambda out: fx.cross_entropy_grad(x, target, out=out),
        "cross_entropy_with_grad": lambda out: fx.cross_entropy_with_grad(x, target, out=out),
    }


@pytest.mark.parametrize("api", ["log_softmax", "softmax", "cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_out(api, dtype):
    x = logits((6, 5), dtype)
    target = np.arange(6) % 5
    for name, out in bad_outs(x.shape, dtype):
        with pytest.raises(ValueError):
            out_calls(x, target)[api](out)
        assert np.all(out == SENTINEL), f"{name}: out= was written to"


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_untouched_when_the_last_target_of_a_big_batch_is_bad(api, dtype):
    rows = 2_000_000
    x = np.random.default_rng(1).standard_normal((rows, 3)).astype(dtype)
    target = np.zeros(rows, dtype=np.int64)
    target[-1] = 3
    out = np.full(x.shape, SENTINEL, dtype=dtype)
    with pytest.raises(IndexError) as info:
        getattr(fx, api)(x, target, out=out)
    assert names_number(str(info.value), 3)
    assert np.all(out == SENTINEL)


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(label_smoothing=-0.5),
        dict(reduction="avg"),
        dict(weight=np.ones(2)),
        dict(axis=3),
        dict(reduction="none", grad_output=np.ones(5)),
    ],
    ids=["label_smoothing", "reduction", "weight", "axis", "grad_output"],
)
def test_out_untouched_after_other_validation_errors(api, kwargs):
    x = logits((6, 5))
    out = np.full(x.shape, SENTINEL)
    with pytest.raises(ValueError):
        getattr(fx, api)(x, np.arange(6) % 5, out=out, **kwargs)
    assert np.all(out == SENTINEL)


@pytest.mark.parametrize("api", ["log_softmax", "softmax"])
def test_out_untouched_after_a_bad_axis(api):
    x = logits((6, 5))
    out = np.full(x.shape, SENTINEL)
    with pytest.raises(ValueError):
        getattr(fx, api)(x, axis=2, out=out)
    assert np.all(out == SENTINEL)


def test_backward_before_forward_raises_runtime_error():
    with pytest.raises(RuntimeError):
        fx.CrossEntropyLoss().backward()
