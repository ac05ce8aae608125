"""Edge cases of SPEC: empty and fully ignored batches, masks, extreme values and sizes,
thread-count independence, and inputs left untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import (
    FLOAT_DTYPES,
    REDUCTIONS,
    Layout,
    Options,
    assert_close,
    assert_loss_close,
    count_rows,
    make_index_target,
    make_infinite_weight_case,
    make_logits,
    make_probability_target,
    make_weight,
    upcast,
)

ALL_IGNORED_OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True, "label_smoothing": 0.3}, id="weight+smoothing"),
]


def every_way(x, target, *, reduction, weight=None, **kwargs):
    """[(name, loss, grad)] from every public entry point that computes a loss."""
    criterion = fx.CrossEntropyLoss(weight, reduction=reduction, **kwargs)
    module_loss = criterion(x, target)
    module_grad = criterion.backward()
    fused_loss, fused_grad = fx.cross_entropy_with_grad(x, target, weight, reduction=reduction, **kwargs)
    return [
        (
            "separate",
            fx.cross_entropy(x, target, weight, reduction=reduction, **kwargs),
            fx.cross_entropy_grad(x, target, weight, reduction=reduction, **kwargs),
        ),
        ("with_grad", fused_loss, fused_grad),
        ("CrossEntropyLoss", module_loss, module_grad),
    ]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize(
    "shape,axis", [((0, 5), None), ((0, 5, 3), None), ((4, 5, 0), None), ((2, 0, 5), -1)]
)
def test_empty_batch(shape, axis, probabilities, reduction, dtype):
    layout = Layout(shape, axis)
    x = np.zeros(shape, dtype=dtype)
    target = np.zeros(shape, dtype=dtype) if probabilities else np.zeros(layout.row_shape, dtype=np.int64)
    for name, loss, grad in every_way(x, target, reduction=reduction, axis=axis, label_smoothing=0.1):
        if reduction == "mean":
            assert np.isnan(loss), name
        elif reduction == "sum":
            assert loss == 0, name
        else:
            assert loss.shape == layout.row_shape, name
        assert np.asarray(loss).dtype == dtype, name
        assert grad.shape == shape and grad.dtype == dtype, name
    np.testing.assert_array_equal(
        fx.nll_loss(x, np.zeros(layout.row_shape, dtype=np.int64), axis=axis, reduction=reduction),
        np.asarray({"mean": np.nan, "sum": 0.0, "none": np.zeros(layout.row_shape)}[reduction], dtype=dtype),
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["ignored-index", "probability"])
@pytest.mark.parametrize("shape", [(3, 0), (2, 0, 4), (0,)])
def test_rows_of_no_classes(shape, probabilities, reduction, dtype):
    """An empty class axis: each row's loss is an empty sum (0; index targets must all be ignored),
    the mean is NaN (PyTorch divides by numel / C), the gradient has no element."""
    layout = Layout(shape, None)
    x = np.zeros(shape, dtype=dtype)
    target = np.zeros(shape, dtype=dtype) if probabilities else np.full(layout.row_shape, -100)
    for name, loss, grad in every_way(x, target, reduction=reduction):
        if reduction == "mean":
            assert np.isnan(loss), name
        else:
            assert np.shape(loss) == (layout.row_shape if reduction == "none" else ()), name
            assert np.all(np.asarray(loss) == 0), name
        assert np.asarray(loss).dtype == dtype and grad.shape == shape, name


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ALL_IGNORED_OPTIONS)
@pytest.mark.parametrize("shape,ignore_index", [((6, 5), -100), ((3, 5, 4), 2), ((5,), -100)])
def test_every_row_ignored(rng, shape, ignore_index, options, reduction, dtype):
    layout = Layout(shape, None)
    x = make_logits(rng, shape, dtype)
    target = np.full(layout.row_shape, ignore_index, dtype=np.int64)
    weight = make_weight(rng, 5, dtype) if options.get("weight") else None
    kwargs = dict(ignore_index=ignore_index, label_smoothing=options.get("label_smoothing", 0.0))
    for name, loss, grad in every_way(x, target, reduction=reduction, weight=weight, **kwargs):
        if reduction == "mean":
            assert np.isnan(loss), name
        elif reduction == "sum":
            assert loss == 0, name
        else:
            assert loss.shape == layout.row_shape and np.all(loss == 0), name
        assert grad.shape == shape and np.all(grad == 0), name
        assert grad.dtype == dtype and np.asarray(loss).dtype == dtype, name
    grad = fx.cross_entropy_grad(
        x, target, weight, reduction=reduction, grad_output=np.float64(7.0), **kwargs
    )
    assert np.all(grad == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "options", [{}, {"label_smoothing": 0.2}, {"z_loss": 0.1}, {"label_smoothing": 0.2, "z_loss": 0.1}]
)
def test_kept_rows_whose_classes_weigh_nothing(rng, options, reduction, dtype):
    """Rows kept, but every target class of weight 0: D = 0, so the mean is NaN (PyTorch's unsmoothed
    part is 0 / 0) and the gradient zero, even though smoothing and the z-loss add to the sum."""
    x = make_logits(rng, (6, 3), dtype)
    target = np.array([0, 0, 2, 2, 0, 2])
    weight = np.array([0.0, 1.0, 0.0], dtype)
    smoothing = options.get("label_smoothing", 0.0)
    expected = ref.cross_entropy(upcast(x), target, upcast(weight), reduction="none", label_smoothing=smoothing)
    expected = expected + options.get("z_loss", 0.0) * ref.logsumexp(upcast(x)) ** 2
    assert not options or np.sum(expected) > 0, "the sum the mean would divide by 0"
    for name, loss, grad in every_way(x, target, reduction=reduction, weight=weight, **options):
        if reduction == "mean":
            assert np.isnan(loss), name
            assert np.all(grad == 0), name
        else:
            assert_loss_close(loss, np.sum(expected) if reduction == "sum" else expected, dtype, reduction, 6)
    if reduction == "mean" and not options.get("z_loss"):
        assert np.isnan(fx.nll_loss(fx.log_softmax(x), target, weight))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_logits(rng, reduction, label_smoothing, dtype):
    layout = Layout((40, 19), None)
    x = make_logits(rng, layout.shape, dtype)
    mask = rng.random(layout.shape) < 0.4
    target = make_index_target(rng, layout)
    mask[np.arange(40), target] = False
    x[mask] = -np.inf
    for name, loss, grad in every_way(x, target, reduction=reduction, label_smoothing=label_smoothing):
        expected = ref.cross_entropy(upcast(x), target, reduction=reduction, label_smoothing=label_smoothing)
        assert_loss_close(loss, expected, dtype, reduction, 40)
        if label_smoothing == 0:
            assert np.all(np.isfinite(loss)), name
            assert np.all(grad[mask] == 0), name
        else:
            # The smoothing term takes every log-probability, -inf included (as PyTorch).
            assert np.all(np.asarray(loss) == np.inf), name
        expected_grad = ref.cross_entropy_grad(
            upcast(x), target, reduction=reduction, label_smoothing=label_smoothing
        )
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [2, 10, 40, 300, 70000])
def test_probabilities_below_the_smallest_normal_number(dtype, classes):
    """A probability exp(x - max) / sum just below the smallest normal number comes out as its
    subnormal value (as in PyTorch), not 0, in softmax and in the gradient; one far below it is 0."""
    tiny = np.finfo(dtype).smallest_normal
    step = np.finfo(dtype).smallest_subnormal
    far = -100.0 if dtype == np.float32 else -750.0
    for d in np.log(tiny) + np.array([-0.15, -0.1, -0.01]):
        x = np.full((3, classes), -np.inf, dtype=dtype)
        x[:, 0] = 0.0
        x[:, 1] = d
        if classes > 2:
            x[:, 2] = far
        expected = np.exp(np.float64(x[0, 1])) / (1.0 + np.exp(np.float64(x[0, 1])))
        assert 0 < expected < tiny
        target = np.zeros(3, dtype=np.int64)
        probabilities = fx.softmax(x, axis=1)
        gradients = [grad for _, _, grad in every_way(x, target, reduction="sum")]
        for got in [probabilities] + gradients:
            assert np.all(np.abs(got[:, 1].astype(np.float64) - expected) <= 4 * step), (d, got[:, 1])
            assert np.all(got[:, 1] > 0)
            if classes > 2:
                assert np.all(got[:, 2] == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_target_gives_infinite_loss(dtype):
    x = np.array([[0.0, -np.inf, 1.0], [0.0, 1.0, 2.0]], dtype=dtype)
    loss = fx.cross_entropy(x, np.array([1, 2]), reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize(
    "shape", [(64, 5), (300, 3), (33, 40), (4, 3000), (2, 150_001), (5, 7, 3, 4), (3, 300, 2)]
)
def test_infinite_class_weight_at_the_row_max(rng, shape, probabilities, reduction, dtype):
    """A class of infinite weight that holds its row's max: its log-probability, -log(sum), is < 0,
    so the smoothing term (or the probability target's) is +inf, as in the reference and PyTorch,
    not inf * 0 = NaN. Shapes for every strategy: tiles, whole rows, rows split across threads, an
    inner class axis."""
    x, target, weight, options = make_infinite_weight_case(rng, shape, probabilities, dtype)
    expected = ref.cross_entropy(upcast(x), upcast(target), upcast(weight), reduction=reduction, **options)
    assert np.all(np.isposinf(expected))
    expected_grad = ref.cross_entropy_grad(upcast(x), upcast(target), upcast(weight), reduction=reduction, **options)
    for name, loss, grad in every_way(x, target, reduction=reduction, weight=weight, **options):
        assert np.all(np.isposinf(loss)), name
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("bad_weight", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("shape", [(64, 5), (33, 40), (4, 3000), (5, 7, 3, 4)])
def test_ignored_rows_stay_zero_under_a_non_finite_class_weight(rng, shape, bad_weight, reduction, dtype):
    """An ignored row is dropped (SPEC: v_i = 0), so its loss and gradient are 0 even where a class
    weighs inf or NaN and label smoothing reaches every class (PyTorch's autograd gives 0 * inf =
    NaN there); the kept rows are inf or NaN, as in the reference."""
    x, target, weight, options = make_infinite_weight_case(rng, shape, False, dtype)
    weight[1] = bad_weight
    ignored = rng.random(target.shape) < 0.5
    ignored.flat[0] = True
    target = np.where(ignored, -100, target)
    expected_grad = ref.cross_entropy_grad(upcast(x), upcast(target), upcast(weight), reduction=reduction, **options)
    ignored_grad = np.expand_dims(ignored, 1) & np.ones(x.shape, bool)
    assert np.all(expected_grad[ignored_grad] == 0.0)
    for name, loss, grad in every_way(x, target, reduction=reduction, weight=weight, **options):
        assert np.all(grad[ignored_grad] == 0.0), name
        assert_close(grad, expected_grad, dtype)
        if reduction == "none":
            assert np.all(loss[ignored] == 0.0), name
            assert not np.any(np.isfinite(loss[~ignored])), name


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
def test_huge_logits(rng, probabilities, reduction, dtype):
    layout = Layout((30, 23), None)
    x = (rng.choice([-1e4, 1e4], size=layout.shape) + rng.standard_normal(layout.shape)).astype(dtype)
    target = make_probability_target(rng, layout, dtype) if probabilities else make_index_target(rng, layout)
    for name, loss, grad in every_way(x, target, reduction=reduction, label_smoothing=0.1):
        assert_loss_close(
            loss,
            ref.cross_entropy(upcast(x), upcast(target), reduction=reduction, label_smoothing=0.1),
            dtype,
            reduction,
            30,
        )
        assert_close(
            grad,
            ref.cross_entropy_grad(upcast(x), upcast(target), reduction=reduction, label_smoothing=0.1),
            dtype,
        )
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), name


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_class(rng, reduction, dtype):
    x = make_logits(rng, (7, 1), dtype)
    target = np.zeros(7, dtype=np.int64)
    for name, loss, grad in every_way(x, target, reduction=reduction, label_smoothing=0.5):
        assert np.all(np.asarray(loss) == 0), name
        assert np.all(grad == 0), name
    np.testing.assert_array_equal(fx.log_softmax(x), np.zeros((7, 1)))
    np.testing.assert_array_equal(fx.softmax(x), np.ones((7, 1)))
    np.testing.assert_array_equal(fx.logsumexp(x), x[:, 0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [33, 47, 63, 65, 100, 129, 1000])
def test_max_in_each_of_the_last_classes(classes, dtype):
    """The row max found wherever it is, in particular among the last classes, which the vector
    blocks of the max reach apart from the rest of the row."""
    positions = np.arange(classes - min(classes, 72), classes)
    x = np.tile(np.linspace(-3.0, 3.0, classes), (len(positions), 1)).astype(dtype)
    x[np.arange(len(positions)), positions] = 1000.0  # far above the rest: a missed max overflows
    target = (positions + 1) % classes
    for got, expected in [
        (fx.logsumexp(x), ref.logsumexp(upcast(x))),
        (fx.log_softmax(x), ref.log_softmax(upcast(x))),
        (fx.cross_entropy(x, target, reduction="none"), ref.cross_entropy(upcast(x), target, reduction="none")),
    ]:
        assert np.all(np.isfinite(got))
        assert_close(got, expected, dtype, terms=classes)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(1, 200_000), (200_000,)], ids=["1,C", "C"])
def test_one_row_of_200000_classes(rng, shape, label_smoothing, dtype):
    layout = Layout(shape, None)
    x = make_logits(rng, shape, dtype)
    target = np.asarray(123_457) if len(shape) == 1 else np.array([123_457])
    weight = make_weight(rng, 200_000, dtype)
    kwargs = dict(label_smoothing=label_smoothing)
    for reduction in REDUCTIONS:
        for name, loss, grad in every_way(x, target, reduction=reduction, weight=weight, **kwargs):
            assert_loss_close(
                loss,
                ref.cross_entropy(upcast(x), target, upcast(weight), reduction=reduction, **kwargs),
                dtype,
                reduction,
                1,
            )
            assert_close(
                grad,
                ref.cross_entropy_grad(upcast(x), target, upcast(weight), reduction=reduction, **kwargs),
                dtype,
            )
    y = make_probability_target(rng, layout, dtype)
    assert_loss_close(
        fx.cross_entropy(x, y, **kwargs), ref.cross_entropy(upcast(x), upcast(y), **kwargs), dtype, "mean", 1
    )


def reference_mean_in_chunks(x, target, chunk=1_000_000):
    """float64 mean cross-entropy of a huge batch, one slice of rows at a time."""
    partial_sums = [
        float(ref.cross_entropy(x[i : i + chunk].astype(np.float64), target[i : i + chunk], reduction="sum"))
        for i in range(0, x.shape[0], chunk)
    ]
    return math.fsum(partial_sums) / x.shape[0]


@pytest.mark.parametrize("shape", [(300_000, 2), (100_000, 10), (40_000, 32), (4, 21, 100, 90)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_float32_reductions_of_small_class_counts_are_within_1e_7(rng, shape, label_smoothing):
    """Tiles of rows add their rows' log-sums as logs of products: SPEC's 1e-7 for mean and sum, with
    ignored rows, against float64."""
    x = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    target = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    target[rng.random(target.shape) < 0.2] = -100
    kwargs = dict(axis=1, label_smoothing=label_smoothing)
    for reduction in ("mean", "sum"):
        expected = float(ref.cross_entropy(x.astype(np.float64), target, reduction=reduction, **kwargs))
        got = fx.cross_entropy(x, target, reduction=reduction, **kwargs)
        assert isinstance(got, np.float32)
        assert abs(float(got) - expected) <= 1e-7 * abs(expected)


@pytest.mark.slow
def test_float32_mean_over_ten_million_rows_accumulates_in_float64():
    rng = np.random.default_rng(7)
    rows = 10**7
    x = rng.standard_normal((rows, 2), dtype=np.float32)
    x[:, 0] += np.float32(0.75)
    target = rng.integers(0, 2, rows).astype(np.int32)
    expected = reference_mean_in_chunks(x, target)
    got = fx.cross_entropy(x, target)
    assert isinstance(got, np.float32)
    assert abs(float(got) - expected) <= 1e-7 * abs(expected)
    got_sum = fx.cross_entropy(x, target, reduction="sum")
    assert abs(float(got_sum) - expected * rows) <= 1e-7 * abs(expected * rows)


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

THREAD_CASES = [
    pytest.param(Layout((20_000, 37), None), id="N,C"),
    pytest.param(Layout((16, 37, 700), None), id="N,C,d"),
    pytest.param(Layout((40, 300, 37), -1), id="B,T,V"),
]


def everything(rng, layout: Layout, dtype):
    """Every public function's result on one problem: a list of (name, array)."""
    x = make_logits(rng, layout.shape, dtype)
    options = Options(weight=True, ignore_some_rows=True, label_smoothing=0.1)
    target = make_index_target(rng, layout, options)
    y = make_probability_target(rng, layout, dtype)
    weight = make_weight(rng, layout.num_classes, dtype)
    axis = layout.class_axis
    kw = dict(axis=layout.axis, label_smoothing=0.1)
    results = [
        ("log_softmax", fx.log_softmax(x, axis=axis)),
        ("softmax", fx.softmax(x, axis=axis)),
        ("logsumexp", fx.logsumexp(x, axis=axis)),
        ("nll_loss", fx.nll_loss(x, target, weight, axis=layout.axis)),
    ]
    for reduction in REDUCTIONS:
        for kind, t in (("index", target), ("probability", y)):
            results.append(
                (
                    f"cross_entropy-{kind}-{reduction}",
                    fx.cross_entropy(x, t, weight, reduction=reduction, **kw),
                )
            )
            results.append(
                (f"grad-{kind}-{reduction}", fx.cross_entropy_grad(x, t, weight, reduction=reduction, **kw))
            )
            loss, grad = fx.cross_entropy_with_grad(x, t, weight, reduction=reduction, **kw)
            results.append((f"with_grad-loss-{kind}-{reduction}", loss))
            results.append((f"with_grad-grad-{kind}-{reduction}", grad))
    return results


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", THREAD_CASES)
def test_results_do_not_depend_on_the_thread_count(restore_num_threads, layout, dtype):
    fx.set_num_threads(1)
    assert fx.get_num_threads() == 1
    one = everything(np.random.default_rng(3), layout, dtype)
    for threads in (2, 7):
        fx.set_num_threads(threads)
        assert fx.get_num_threads() == threads
        many = everything(np.random.default_rng(3), layout, dtype)
        for (name, a), (_, b) in zip(one, many):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), f"{name} differs between 1 and {threads} threads"


# ---------------------------------------------------------------------------
# inputs are never modified
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [np.float16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_inputs_are_never_modified(rng, order, dtype):
    layout = Layout((12, 9, 4), None)
    x = np.asarray(make_logits(rng, layout.shape, dtype), order=order)
    x[0, 2, 1] = -np.inf
    target = np.asarray(make_index_target(rng, layout, Options(ignore_some_rows=True)), order=order)
    y = np.asarray(make_probability_target(rng, layout, dtype), order=order)
    weight = make_weight(rng, 9, dtype)
    g = np.asarray(rng.uniform(-1, 1, layout.row_shape), order=order)
    inputs = [x, target, y, weight, g]
    copies = [a.copy(order="K") for a in inputs]

    fx.log_softmax(x, axis=1)
    fx.softmax(x, axis=1)
    fx.logsumexp(x, axis=1)
    fx.nll_loss(x, target, weight)
    for t in (target, y):
        for reduction in REDUCTIONS:
            fx.cross_entropy(x, t, weight, reduction=reduction, label_smoothing=0.1)
        fx.cross_entropy_grad(x, t, weight, reduction="none", grad_output=g, label_smoothing=0.1)
        fx.cross_entropy_with_grad(x, t, weight, reduction="none", grad_output=g, label_smoothing=0.1)
        criterion = fx.CrossEntropyLoss(weight, reduction="none", label_smoothing=0.1)
        criterion(x, t)
        criterion.backward(g)
    for a, copy in zip(inputs, copies):
        np.testing.assert_array_equal(a, copy)
        assert a.flags.c_contiguous == copy.flags.c_contiguous


def test_results_are_new_arrays(rng):
    x = make_logits(rng, (5, 4))
    target = np.array([0, 1, 2, 3, 0])
    for result in (
        fx.log_softmax(x),
        fx.softmax(x),
        fx.cross_entropy_grad(x, target),
        fx.cross_entropy(x, target, reduction="none"),
    ):
        assert not np.shares_memory(result, x)
        assert result.flags.writeable and result.flags.c_contiguous


# ---------------------------------------------------------------------------
# out= may be the input itself
# ---------------------------------------------------------------------------

ALIAS_CASES = [
    pytest.param(Layout((9, 37), None), id="N,C"),
    pytest.param(Layout((8, 37, 300), None), id="N,C,d-many-rows"),
    pytest.param(Layout((300, 10), None), id="N,C-small-classes"),
    pytest.param(Layout((3, 2000), None), id="N,C-wide"),
]


@pytest.mark.parametrize("layout", ALIAS_CASES)
@pytest.mark.parametrize("function", ["log_softmax", "softmax"])
def test_softmax_in_place(rng, function, layout):
    """SPEC: inputs are never modified unless passed as out=, so out=x is allowed."""
    dtype = np.float64
    x = make_logits(rng, layout.shape, dtype)
    expected = getattr(ref, function)(x.astype(np.float64), axis=layout.class_axis)
    result = getattr(fx, function)(x, axis=layout.class_axis, out=x)
    assert result is x
    assert_close(x, expected, dtype)


@pytest.mark.parametrize("layout", ALIAS_CASES)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("api", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_gradient_written_over_the_logits(rng, api, probabilities, layout):
    dtype = np.float64
    x = make_logits(rng, layout.shape, dtype)
    target = make_probability_target(rng, layout, dtype) if probabilities else make_index_target(rng, layout)
    weight = make_weight(rng, layout.num_classes, dtype)
    kwargs = dict(label_smoothing=0.1, reduction="mean")
    expected_loss = ref.cross_entropy(upcast(x), upcast(target), upcast(weight), **kwargs)
    expected_grad = ref.cross_entropy_grad(upcast(x), upcast(target), upcast(weight), **kwargs)
    result = getattr(fx, api)(x, target, weight, out=x, **kwargs)
    if api == "cross_entropy_with_grad":
        loss, grad = result
        assert_loss_close(loss, expected_loss, dtype, "mean", count_rows(layout))
    else:
        grad = result
    assert grad is x
    assert_close(x, expected_grad, dtype)


# ---------------------------------------------------------------------------
# NaN and +inf logits, byte order, zero strides, wide strided rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_nan_and_inf_logits_spoil_only_their_rows(rng, label_smoothing, dtype):
    x = make_logits(rng, (6, 9), dtype)
    x[1, 4] = np.nan
    x[3, 2] = np.inf
    target = np.array([0, 1, 2, 3, 4, 5])
    loss, grad = fx.cross_entropy_with_grad(x, target, reduction="none", label_smoothing=label_smoothing)
    expected = ref.cross_entropy(upcast(x), target, reduction="none", label_smoothing=label_smoothing)
    assert_close(loss, expected, dtype)
    assert np.isnan(loss[1]) and np.isnan(loss[3])
    assert np.all(np.isfinite(loss[[0, 2, 4, 5]]))
    assert np.all(np.isfinite(grad[[0, 2, 4, 5]]))
    assert np.isnan(fx.cross_entropy(x, target, label_smoothing=label_smoothing))


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_non_native_byte_order(rng, dtype):
    native = make_logits(rng, (7, 11), np.dtype(dtype).newbyteorder("="))
    swapped = native.astype(dtype)
    target = make_index_target(rng, Layout((7, 11), None))
    np.testing.assert_array_equal(fx.log_softmax(swapped), fx.log_softmax(native))
    np.testing.assert_array_equal(fx.logsumexp(swapped), fx.logsumexp(native))
    np.testing.assert_array_equal(
        fx.cross_entropy(swapped, target.astype(">i8"), reduction="none"),
        fx.cross_entropy(native, target, reduction="none"),
    )
    np.testing.assert_array_equal(
        fx.cross_entropy_grad(swapped, target), fx.cross_entropy_grad(native, target)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_stride_targets_and_weight(rng, reduction):
    x = make_logits(rng, (6, 5, 4), np.float32)
    target = np.broadcast_to(np.array([1, 3, 0, 4]), (6, 4))
    weight = np.broadcast_to(np.float32(0.5), (5,))
    got = fx.cross_entropy(x, target, weight, reduction=reduction)
    expected = ref.cross_entropy(upcast(x), target, upcast(weight), reduction=reduction)
    assert_loss_close(got, expected, np.float32, reduction, 24)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "shape", [(2, 5000, 3), (1, 3, 100_000), (3, 2049, 33)], ids=["wide-C", "long-d", "odd"]
)
def test_wide_rows_along_a_strided_class_axis(rng, shape, dtype):
    layout = Layout(shape, None)
    x = make_logits(rng, shape, dtype)
    x[rng.random(shape) < 0.1] = -np.inf
    x[:, 0] = 0.0
    target = np.zeros(layout.row_shape, dtype=np.int64)
    for reduction in REDUCTIONS:
        loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction)
        assert_loss_close(
            loss, ref.cross_entropy(upcast(x), target, reduction=reduction), dtype, reduction, target.size
        )
        assert_close(grad, ref.cross_entropy_grad(upcast(x), target, reduction=reduction), dtype)
    assert_close(fx.logsumexp(x, axis=1), ref.logsumexp(upcast(x), axis=1), dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_losses_beyond_the_result_dtype_are_infinite_without_a_warning(reduction):
    """A loss too large for its dtype (float32 logits 6e38 apart, float16 ones 120000 apart, a sum of
    two 3e38 float32 losses, a z-loss of 1e57) rounds to infinity, as PyTorch returns it, with no
    NumPy overflow warning (the suite turns warnings into errors)."""
    target = np.array([1, 0])
    for x in (
        np.array([[3e38, -3e38], [-3e38, 3e38]], np.float32),
        np.array([[6e4, -6e4], [-6e4, 6e4]], np.float16),
    ):
        for loss in (
            fx.cross_entropy(x, target, reduction=reduction),
            fx.cross_entropy(x, target, reduction=reduction, label_smoothing=0.1),
            fx.cross_entropy_with_grad(x, target, reduction=reduction)[0],
            fx.CrossEntropyLoss(reduction=reduction)(x, target),
        ):
            assert np.asarray(loss).dtype == x.dtype
            assert np.isposinf(np.asarray(loss).reshape(-1)[0])
    log_probs = np.array([[-3e38, 0.0], [-3e38, 0.0]], np.float32)
    assert np.isposinf(fx.nll_loss(log_probs, np.array([0, 0]), reduction="sum"))
    x = np.array([[1e30, 0.0], [0.0, 0.0]], np.float32)
    loss, z_part = fx.cross_entropy(x, target, reduction=reduction, z_loss=1e-3, return_z_loss=True)
    assert np.isposinf(np.asarray(loss).reshape(-1)[0]) and np.isposinf(np.asarray(z_part).reshape(-1)[0])
