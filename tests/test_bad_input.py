"""Bad input beyond SPEC's error table: each case raises the exception SPEC names, with a message
that says what is wrong, writes nothing, and never crashes the interpreter.

(SPEC's error table itself is covered in test_errors.py.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastxent as fx
import reference as ref

SENTINEL = -12345.0


def logits(shape=(6, 5), dtype=np.float64):
    return np.random.default_rng(7).standard_normal(shape).astype(dtype)


def targets(rows=6, classes=5):
    return np.arange(rows) % classes


LOSSES = {
    "cross_entropy": lambda x, t, **kw: fx.cross_entropy(x, t, **kw),
    "cross_entropy_grad": lambda x, t, **kw: fx.cross_entropy_grad(x, t, **kw),
    "cross_entropy_with_grad": lambda x, t, **kw: fx.cross_entropy_with_grad(x, t, **kw),
    "CrossEntropyLoss": lambda x, t, **kw: fx.CrossEntropyLoss(**kw)(x, t),
}
INDEX_LOSSES = dict(LOSSES, nll_loss=lambda x, t, **kw: fx.nll_loss(x, t, **kw))
SOFTMAX_FAMILY = ["log_softmax", "softmax", "logsumexp"]


def says(error: pytest.ExceptionInfo, *words: str) -> None:
    """The message names every one of ``words`` (case-insensitive) and does not leak the private
    module's signature."""
    message = str(error.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert "incompatible function arguments" not in message, message


# ---------------------------------------------------------------------------
# label_smoothing, weight, ignore_index
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", LOSSES)
@pytest.mark.parametrize("value", [float("nan"), np.float32("nan"), np.nan], ids=["float", "float32", "np.nan"])
def test_nan_label_smoothing(api, value):
    with pytest.raises(ValueError) as error:
        LOSSES[api](logits(), targets(), label_smoothing=value)
    says(error, "label_smoothing")


@pytest.mark.parametrize("api", LOSSES)
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 1.0000001, -1e-300])
def test_label_smoothing_just_outside_or_infinite(api, value):
    with pytest.raises(ValueError) as error:
        LOSSES[api](logits(), targets(), label_smoothing=value)
    says(error, "label_smoothing")


@pytest.mark.parametrize("api", INDEX_LOSSES)
@pytest.mark.parametrize(
    "weight",
    [
        np.ones(5, dtype=np.complex128),
        np.array([1, 2, 3, 4, None], dtype=object),
        np.array(["a", "b", "c", "d", "e"]),
        ["1", "2", "3", "4", "5"],
        np.ones(5, dtype=bool),
        np.array([b"a"] * 5),
    ],
    ids=["complex", "object", "str", "list-of-str", "bool", "bytes"],
)
def test_weight_of_a_wrong_dtype(api, weight):
    with pytest.raises(TypeError) as error:
        INDEX_LOSSES[api](logits(), targets(), weight=weight)
    says(error, "weight")


@pytest.mark.parametrize("api", INDEX_LOSSES)
@pytest.mark.parametrize(
    "weight",
    [np.float64(2.0), np.ones((1, 5)), np.ones(4), np.ones(6), np.ones(0), np.ones((5, 1))],
    ids=["0-d", "(1,5)", "short", "long", "empty", "(5,1)"],
)
def test_weight_of_a_wrong_shape_names_the_class_count(api, weight):
    with pytest.raises(ValueError) as error:
        INDEX_LOSSES[api](logits(), targets(), weight=weight)
    says(error, "weight", "5")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nan_weight_gives_nan_not_a_crash(reduction, label_smoothing):
    """A NaN class weight is allowed (as in PyTorch): the affected results are NaN, nothing raises.

    With label smoothing every row's loss uses every weight, so every row is NaN; without it only
    the rows whose target class has the NaN weight (and the reduced loss) are."""
    x = logits()
    t = targets()
    weight = np.array([1.0, np.nan, 2.0, 0.5, 1.5])
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    loss, grad = fx.cross_entropy_with_grad(x, t, weight, **kwargs)
    with np.errstate(invalid="ignore"):
        expected = ref.cross_entropy(x, t, weight, **kwargs)
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(expected))
    np.testing.assert_allclose(loss, expected, rtol=1e-12, equal_nan=True)
    if reduction == "none":
        affected = t == 1 if label_smoothing == 0 else np.ones(t.shape, bool)
        np.testing.assert_array_equal(np.isnan(loss), affected)
    else:
        assert np.isnan(loss)
    assert grad.shape == x.shape
    nll = fx.nll_loss(x, t, weight, reduction=reduction)
    assert np.isnan(nll).any()


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_nan_weight_of_another_class_leaves_the_gradient_finite_without_smoothing(reduction):
    """As in PyTorch: without label smoothing a row's loss and gradient use only its target's weight,
    so a NaN weight makes NaN only the rows that target that class; every other row's loss is
    finite, and so must be its gradient (0 * NaN from the unused smoothing terms must not leak)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = logits()
    t = targets()
    weight = np.array([1.0, np.nan, 2.0, 0.5, 1.5])
    loss, grad = fx.cross_entropy_with_grad(x, t, weight, reduction=reduction)
    logits_tensor = torch.tensor(x, requires_grad=True)
    torch_loss = F.cross_entropy(logits_tensor, torch.tensor(t), weight=torch.tensor(weight), reduction=reduction)
    torch_loss.backward(torch.ones_like(torch_loss))
    np.testing.assert_allclose(loss, torch_loss.detach().numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(logits_tensor.grad.numpy()))
    np.testing.assert_allclose(grad, logits_tensor.grad.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("api", INDEX_LOSSES)
@pytest.mark.parametrize("value", [1.5, "3", None, np.float64(2.0), True])
def test_ignore_index_that_is_not_an_integer(api, value):
    with pytest.raises(TypeError) as error:
        INDEX_LOSSES[api](logits(), targets(), ignore_index=value)
    says(error, "ignore_index")


@pytest.mark.parametrize("api", INDEX_LOSSES)
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
def test_ignore_index_outside_int64(api, value):
    """No target can equal it; the call must refuse it with a message naming ignore_index, not the
    private module's signature."""
    with pytest.raises((TypeError, ValueError, OverflowError)) as error:
        INDEX_LOSSES[api](logits(), targets(), ignore_index=value)
    says(error, "ignore_index")


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad", "CrossEntropyLoss.backward"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_grad_output_int_beyond_float(api, reduction, value):
    """A Python int is a scalar grad_output; one beyond float's range is a ValueError naming it."""
    calls = {
        "cross_entropy_grad": lambda: fx.cross_entropy_grad(
            logits(), targets(), reduction=reduction, grad_output=value
        ),
        "cross_entropy_with_grad": lambda: fx.cross_entropy_with_grad(
            logits(), targets(), reduction=reduction, grad_output=value
        ),
        "CrossEntropyLoss.backward": lambda: _criterion_after_forward(reduction).backward(value),
    }
    with pytest.raises(ValueError) as error:
        calls[api]()
    says(error, "grad_output")
    np.testing.assert_array_equal(
        fx.cross_entropy_grad(logits(), targets(), reduction=reduction, grad_output=2**70),
        fx.cross_entropy_grad(logits(), targets(), reduction=reduction, grad_output=float(2**70)),
    )


def _criterion_after_forward(reduction):
    criterion = fx.CrossEntropyLoss(reduction=reduction)
    criterion(logits(), targets())
    return criterion


# ---------------------------------------------------------------------------
# inputs and targets of the wrong kind
# ---------------------------------------------------------------------------

WRONG_KIND = [
    pytest.param(lambda: np.array([[1.0, None]], dtype=object), id="object"),
    pytest.param(lambda: np.array([["a", "b"]]), id="str"),
    pytest.param(lambda: np.array([[b"a", b"b"]]), id="bytes"),
    pytest.param(lambda: np.ones((2, 3), dtype=np.complex64), id="complex64"),
    pytest.param(lambda: np.ones((2, 3), dtype=np.complex128), id="complex128"),
    pytest.param(lambda: np.ones((2, 3), dtype=np.int32), id="int32"),
    pytest.param(lambda: np.ones((2, 3), dtype=bool), id="bool"),
    pytest.param(lambda: np.zeros((2, 3), dtype="datetime64[s]"), id="datetime64"),
    pytest.param(lambda: np.zeros(2, dtype=[("a", "f8"), ("b", "f8")]), id="structured"),
    pytest.param(lambda: [[1.0, "x"]], id="list-with-str"),
    pytest.param(lambda: {"a": 1.0}, id="dict"),
    pytest.param(lambda: None, id="None"),
]


@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
@pytest.mark.parametrize("make", WRONG_KIND)
def test_wrong_kind_of_input_to_the_softmax_family(function, make):
    with pytest.raises(TypeError) as error:
        getattr(fx, function)(make())
    says(error, "dtype")


@pytest.mark.parametrize("api", INDEX_LOSSES)
@pytest.mark.parametrize("make", WRONG_KIND)
def test_wrong_kind_of_input_to_the_losses(api, make):
    x = make()
    with pytest.raises(TypeError) as error:
        INDEX_LOSSES[api](x, np.zeros(np.shape(x)[:1], dtype=np.int64) if np.ndim(x) else np.int64(0))
    says(error, "dtype")


@pytest.mark.parametrize("api", LOSSES)
@pytest.mark.parametrize(
    "target",
    [
        np.array([0, 1, 2, 3, 4, None], dtype=object),
        np.array(["0", "1", "2", "3", "4", "0"]),
        np.ones(6, dtype=np.complex128),
        np.ones(6, dtype=bool),
        np.ones((6, 5), dtype=np.complex64),
    ],
    ids=["object", "str", "complex", "bool", "complex-probabilities"],
)
def test_wrong_kind_of_target(api, target):
    with pytest.raises(TypeError) as error:
        LOSSES[api](logits(), target)
    says(error, "target")


@pytest.mark.parametrize("api", LOSSES)
@pytest.mark.parametrize(
    "shape", [(6,), (5, 6), (6, 5, 1), (1, 5), (6, 4), (30,), ()], ids=lambda s: "x".join(map(str, s)) or "0-d"
)
def test_probability_target_of_the_wrong_shape_names_both_shapes(api, shape):
    """A float target is a probability target: it needs exactly the input's shape (no broadcasting)."""
    x = logits((6, 5))
    target = np.full(shape, 0.2)
    with pytest.raises(ValueError) as error:
        LOSSES[api](x, target)
    says(error, str(tuple(shape)), "(6, 5)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_target_of_another_float_dtype_is_accepted(dtype):
    x = logits((6, 5), dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    y = np.full((6, 5), 0.2, dtype=other)
    assert np.isfinite(fx.cross_entropy(x, y))


@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
@pytest.mark.parametrize("x", [np.float64(1.0), np.array(1.0), np.array(1.0, dtype=np.float32), 3.0])
def test_zero_dimensional_input_to_the_softmax_family(function, x):
    with pytest.raises(ValueError) as error:
        getattr(fx, function)(x)
    says(error, "0-d")


@pytest.mark.parametrize("api", INDEX_LOSSES)
def test_zero_dimensional_input_to_the_losses(api):
    with pytest.raises(ValueError) as error:
        INDEX_LOSSES[api](np.array(1.0), np.array(0))
    says(error, "0-d")


@pytest.mark.parametrize("api", LOSSES)
def test_zero_dimensional_target_for_a_batch(api):
    with pytest.raises(ValueError) as error:
        LOSSES[api](logits((6, 5)), np.array(1))
    says(error, "()", "(6, 5)")


@pytest.mark.parametrize("function", SOFTMAX_FAMILY)
def test_ragged_nested_lists(function):
    with pytest.raises(ValueError):
        getattr(fx, function)([[1.0], [2.0, 3.0]])


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------

OUT_APIS = {
    "log_softmax": lambda x, t, out: fx.log_softmax(x, out=out),
    "softmax": lambda x, t, out: fx.softmax(x, out=out),
    "cross_entropy_grad": lambda x, t, out: fx.cross_entropy_grad(x, t, out=out),
    "cross_entropy_with_grad": lambda x, t, out: fx.cross_entropy_with_grad(x, t, out=out),
    "CrossEntropyLoss.backward": lambda x, t, out: _backward(x, t, out),
}


def _backward(x, t, out, **options):
    criterion = fx.CrossEntropyLoss(**options)
    criterion(x, t)
    return criterion.backward(out=out)


def filled(shape, dtype=np.float64, order="C"):
    return np.full(shape, SENTINEL, dtype=dtype, order=order)


def read_only(shape, dtype=np.float64):
    a = filled(shape, dtype)
    a.flags.writeable = False
    return a


def bad_outs(shape, dtype):
    other = np.float32 if dtype == np.float64 else np.float64
    return {
        "read-only": (read_only(shape, dtype), "read-only"),
        "wrong-shape": (filled(shape[::-1], dtype), "shape"),
        "flat": (filled((int(np.prod(shape)),), dtype), "shape"),
        "extra-axis": (filled(shape + (1,), dtype), "shape"),
        "fortran": (filled(shape, dtype, order="F"), "contiguous"),
        "strided": (filled(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2], "contiguous"),
        "reversed": (filled(shape, dtype)[::-1], "contiguous"),
        "other-float": (filled(shape, other), "dtype"),
        "float16": (filled(shape, np.float16), "dtype"),
        "int": (np.full(shape, -1, dtype=np.int64), "dtype"),
        "complex": (filled(shape, np.complex128), "dtype"),
        "object": (np.full(shape, SENTINEL, dtype=object), "dtype"),
    }


@pytest.mark.parametrize("api", OUT_APIS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kind",
    ["read-only", "wrong-shape", "flat", "extra-axis", "fortran", "strided", "reversed", "other-float",
     "float16", "int", "complex", "object"],
)
def test_bad_out_is_refused_and_untouched(api, dtype, kind):
    x = logits((6, 5), dtype)
    out, word = bad_outs(x.shape, dtype)[kind]
    before = out.copy()
    with pytest.raises(ValueError) as error:
        OUT_APIS[api](x, targets(), out)
    says(error, "out", word)
    np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("api", OUT_APIS)
@pytest.mark.parametrize("value", [[[0.0] * 5] * 6, 1.0, "out"], ids=["list", "float", "str"])
def test_out_that_is_not_an_array(api, value):
    with pytest.raises(ValueError) as error:
        OUT_APIS[api](logits(), targets(), value)
    says(error, "out")


# Partial overlap: out= shares memory with the logits but is not the logits array itself. The
# kernels read a row and write a row; an out= shifted by one row would overwrite rows not yet read.
# 40 classes (more than the 32 that are transposed into a private tile) and 300 rows.
OVERLAP_SHAPE = (300, 40)


def shifted_views(dtype=np.float64):
    rows, classes = OVERLAP_SHAPE
    buffer = np.random.default_rng(3).standard_normal((rows + 1, classes)).astype(dtype)
    return buffer[:-1], buffer[1:]


@pytest.mark.parametrize("api", OUT_APIS)
def test_out_partially_overlapping_the_logits(api):
    x, out = shifted_views()
    before = x.copy()
    target = np.arange(x.shape[0]) % x.shape[1]
    with pytest.raises(ValueError) as error:
        OUT_APIS[api](x, target, out)
    says(error, "overlap")
    np.testing.assert_array_equal(x, before)


GRAD_APIS = {
    "cross_entropy_grad": lambda x, t, out: fx.cross_entropy_grad(x, t, axis=-1, out=out),
    "cross_entropy_with_grad": lambda x, t, out: fx.cross_entropy_with_grad(x, t, axis=-1, out=out),
    "CrossEntropyLoss.backward": lambda x, t, out: _backward(x, t, out, axis=-1),
    # Default options: the common call's path, for 2-D logits.
    "CrossEntropyLoss.backward-default": _backward,
}


@pytest.mark.parametrize("api", [name for name in GRAD_APIS if not name.endswith("default")])
def test_out_overlapping_logits_that_are_copied(api):
    """A view the kernels cannot read in place (3 classes of rows in blocks) is copied first; out= may
    still not overlap the caller's array, which the loss class's backward would otherwise write."""
    base = np.random.default_rng(0).standard_normal((2, 4, 3))
    x = base[:, :-1]
    out = base.reshape(-1)[: x.size].reshape(x.shape)
    before = base.copy()
    with pytest.raises(ValueError) as error:
        GRAD_APIS[api](x, np.zeros((2, 3), np.int64), out)
    says(error, "overlap")
    np.testing.assert_array_equal(base, before)


@pytest.mark.parametrize("api", GRAD_APIS)
def test_out_overlapping_the_index_targets(api):
    buffer = np.zeros(12, np.int64)
    target = buffer[:6]
    out = buffer.view(np.float64)[:12].reshape(6, 2)
    with pytest.raises(ValueError) as error:
        GRAD_APIS[api](logits((6, 2)), target, out)
    says(error, "overlap")
    np.testing.assert_array_equal(buffer, 0)


@pytest.mark.parametrize("api", [*GRAD_APIS, "log_softmax", "softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_out_whose_axis_of_one_has_another_stride(api, dtype):
    """An axis of extent 1 may have any stride: out= viewing the logits' elements through other
    strides there is still the logits array, an in-place result, on the common call's path (no
    axis given, classes along axis 1) and on the general one."""
    t = np.array([[0], [1], [4], [2]])
    for view, shape in [(np.s_[:, :, None], (4, 5, 1)), (np.s_[:, None, :], (4, 1, 5))]:
        base = logits((4, 5), dtype)
        x, out = base[view], base.reshape(shape)  # strides with a 0, and without
        assert np.shares_memory(out, x) and out.strides != x.strides and x.flags.c_contiguous
        axis = 1 if x.shape[1] == 5 else -1
        if api in ("log_softmax", "softmax"):
            expected = getattr(fx, api)(x.copy(), axis=axis)
            result = getattr(fx, api)(x, axis=axis, out=out)
        elif api == "CrossEntropyLoss.backward-default":
            if axis != 1:
                continue
            expected = fx.cross_entropy_grad(x.copy(), t)
            result = _backward(x, t, out)
        else:
            expected = fx.cross_entropy_grad(x.copy(), t, axis=axis)
            result = {
                "cross_entropy_grad": lambda: fx.cross_entropy_grad(x, t, axis=axis, out=out),
                "cross_entropy_with_grad": lambda: fx.cross_entropy_with_grad(x, t, axis=axis, out=out)[1],
                "CrossEntropyLoss.backward": lambda: _backward(x, t, out, axis=axis),
            }[api]()
        assert result is out
        np.testing.assert_array_equal(out, expected)


def test_out_overlapping_a_reversed_view_of_the_logits():
    x = logits((8, 40))
    with pytest.raises(ValueError) as error:
        fx.softmax(x[::-1], out=x)
    says(error, "overlap")


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_out_aliasing_the_probability_target(api):
    x = logits((6, 5))
    y = np.full((6, 5), 0.2)
    before = y.copy()
    with pytest.raises(ValueError) as error:
        getattr(fx, api)(x, y, out=y)
    says(error, "overlap")
    np.testing.assert_array_equal(y, before)


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_out_aliasing_the_per_row_grad_output(api):
    x = logits((5, 5))
    buffer = np.ones((5, 5))
    grad_output = buffer[0]  # the first row of out= is the per-sample grad_output
    with pytest.raises(ValueError) as error:
        getattr(fx, api)(x, targets(5), reduction="none", grad_output=grad_output, out=buffer)
    says(error, "overlap")
    np.testing.assert_array_equal(buffer, np.ones((5, 5)))


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_out_aliasing_the_index_target(api):
    x = logits((6, 5))
    buffer = np.zeros((6, 5))
    target = buffer.view(np.int64).reshape(-1)[:6]  # class 0 six times, in out='s first row and a half
    with pytest.raises(ValueError) as error:
        getattr(fx, api)(x, target, out=buffer)
    says(error, "overlap")
    np.testing.assert_array_equal(buffer, np.zeros((6, 5)))


@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_out_aliasing_the_weight(api):
    x = logits((6, 5))
    buffer = np.ones((6, 5))
    with pytest.raises(ValueError) as error:
        getattr(fx, api)(x, targets(), buffer[2], out=buffer)
    says(error, "overlap")
    np.testing.assert_array_equal(buffer, np.ones((6, 5)))


# ---------------------------------------------------------------------------
# a bad target at the very end of a 10^7-row batch
# ---------------------------------------------------------------------------

BIG_ROWS = 10**7


@pytest.fixture(scope="module")
def big_batch():
    x = np.zeros((BIG_ROWS, 2), dtype=np.float32)
    x[:, 1] = 1.0
    target = np.zeros(BIG_ROWS, dtype=np.int32)
    target[-1] = 2
    return x, target


@pytest.mark.parametrize(
    "api", ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "nll_loss", "CrossEntropyLoss"]
)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_bad_target_at_the_end_of_ten_million_rows(big_batch, api, reduction):
    x, target = big_batch
    out = np.full(x.shape, SENTINEL, dtype=np.float32) if api.endswith("grad") else None
    with pytest.raises(IndexError) as error:
        if api == "CrossEntropyLoss":
            fx.CrossEntropyLoss(reduction=reduction)(x, target)
        elif out is not None:
            getattr(fx, api)(x, target, reduction=reduction, out=out)
        else:
            getattr(fx, api)(x, target, reduction=reduction)
    says(error, "2")
    assert re.search(r"\b2\b.*\b2\b", str(error.value)), "the message names the value 2 and C = 2"
    if out is not None:
        assert np.all(out == SENTINEL), "out= was written before the bad target was found"
    assert np.all(x[:, 1] == 1.0) and np.all(x[:, 0] == 0.0)


def test_loss_class_keeps_its_last_good_call_after_a_bad_target(big_batch):
    """A forward that raises leaves the criterion's previous forward in place for backward."""
    x, bad_target = big_batch
    criterion = fx.CrossEntropyLoss()
    small = logits((6, 5))
    criterion(small, targets())
    expected = criterion.backward()
    with pytest.raises(IndexError):
        criterion(x, bad_target)
    np.testing.assert_array_equal(criterion.backward(), expected)
