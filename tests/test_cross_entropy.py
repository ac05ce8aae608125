"""cross_entropy (forward) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import (
    FLOAT_DTYPES,
    IGNORED_CLASS,
    INDEX_DTYPES,
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
    make_index_target,
    make_logits,
    make_probability_target,
    upcast,
    upcast_kwargs,
)


def check_loss(x, target, reduction, rows, dtype=None, **kwargs):
    dtype = np.asarray(x).dtype if dtype is None else dtype
    got = fx.cross_entropy(x, target, reduction=reduction, **kwargs)
    expected = ref.cross_entropy(upcast(x), upcast(target), reduction=reduction, **upcast_kwargs(kwargs))
    assert_loss_close(got, expected, dtype, reduction, rows)
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", INDEX_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_index_targets(rng, layout, options, reduction, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    got = check_loss(x, target, reduction, count_rows(layout), **kwargs)
    if reduction == "none":
        assert got.shape == layout.row_shape


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", PROBABILITY_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_probability_targets(rng, layout, options, reduction, dtype):
    x = make_logits(rng, layout.shape, dtype)
    target = make_probability_target(rng, layout, dtype)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    got = check_loss(x, target, reduction, count_rows(layout), **kwargs)
    if reduction == "none":
        assert got.shape == layout.row_shape


def test_probability_mean_divides_by_rows_not_weights(rng):
    layout = Layout((5, 4), None)
    x = make_logits(rng, layout.shape)
    y = make_probability_target(rng, layout)
    w = np.array([3.0, 0.5, 2.0, 1.0])
    per_row = fx.cross_entropy(x, y, w, reduction="none")
    np.testing.assert_allclose(fx.cross_entropy(x, y, w), per_row.sum() / 5, rtol=1e-12)


def test_probability_targets_ignore_ignore_index(rng):
    layout = Layout((5, 4), None)
    x = make_logits(rng, layout.shape)
    y = make_probability_target(rng, layout)
    for ignore_index in (0, 1, -100):
        np.testing.assert_array_equal(
            fx.cross_entropy(x, y, ignore_index=ignore_index, reduction="none"),
            fx.cross_entropy(x, y, reduction="none"),
        )


def test_one_hot_probability_targets_equal_index_targets(rng):
    layout = Layout((8, 6), None)
    x = make_logits(rng, layout.shape)
    t = make_index_target(rng, layout)
    one_hot = np.eye(6)[t]
    w = rng.uniform(0.5, 2.0, 6)
    np.testing.assert_allclose(
        fx.cross_entropy(x, one_hot, w, reduction="none", label_smoothing=0.2),
        fx.cross_entropy(x, t, w, reduction="none", label_smoothing=0.2),
        rtol=1e-12,
    )


@pytest.mark.parametrize("target_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", [LAYOUTS[1], LAYOUTS[2], LAYOUTS[4]])
def test_integer_target_dtypes(rng, layout, reduction, target_dtype):
    x = make_logits(rng, layout.shape, np.float32)
    options = Options(weight=True, ignore_index=IGNORED_CLASS, ignore_some_rows=True, label_smoothing=0.1)
    target = make_index_target(rng, layout, options, dtype=np.int64)
    kwargs = loss_kwargs(rng, layout, options, np.float32)
    narrow = target.astype(target_dtype)
    got = check_loss(x, narrow, reduction, count_rows(layout), **kwargs)
    wide = fx.cross_entropy(x, target, reduction=reduction, **kwargs)
    np.testing.assert_array_equal(got, wide)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (33, 10), (300, 1000)])
def test_common_call_equals_the_general_path(rng, shape, reduction, dtype):
    """C-contiguous (N, C) logits with int64 targets and default options take a shorter way into the
    kernels; int32 targets (or a class axis given) go the general way. Same values, types and shapes."""
    x = make_logits(rng, shape, dtype)
    target = rng.integers(0, shape[1], shape[0]).astype(np.int64)
    target[::7] = -100
    common = fx.cross_entropy(x, target, reduction=reduction)
    general = fx.cross_entropy(x, target.astype(np.int32), axis=1, reduction=reduction)
    assert type(common) is type(general)
    assert common.dtype == general.dtype == dtype
    np.testing.assert_array_equal(common, general)
    if reduction == "none":
        assert common.shape == (shape[0],) and common.flags.c_contiguous and common.flags.owndata
    if shape[0] > 0:
        target[-1] = shape[1]
        with pytest.raises(IndexError, match=f"first found at flat position {shape[0] - 1}"):
            fx.cross_entropy(x, target, reduction=reduction)


@pytest.mark.parametrize("target_dtype", [np.int8, np.int16, np.int32])
def test_negative_ignore_index_with_narrow_signed_targets(rng, target_dtype):
    layout = Layout((10, 5), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout, Options(ignore_index=-7, ignore_some_rows=True))
    got = fx.cross_entropy(x, target.astype(target_dtype), ignore_index=-7, reduction="none")
    np.testing.assert_array_equal(got == 0, target == -7)
    check_loss(x, target.astype(target_dtype), "mean", 10, ignore_index=-7)


def test_unsigned_targets_never_match_a_negative_ignore_index(rng):
    layout = Layout((10, 5), None)
    x = make_logits(rng, layout.shape)
    target = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4], dtype=np.uint8)
    got = fx.cross_entropy(x, target, ignore_index=-100, reduction="none")
    assert np.all(got > 0)
    np.testing.assert_allclose(got, ref.cross_entropy(x, target, reduction="none"), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_equal_to_a_class_keeps_it_in_the_softmax(rng, reduction):
    layout = Layout((12, 4), None)
    x = make_logits(rng, layout.shape)
    target = np.array([0, 1, 2, 3] * 3)
    got = fx.cross_entropy(x, target, ignore_index=2, reduction=reduction)
    lsm = ref.log_softmax(x)
    kept = target != 2
    per_row = np.where(kept, -lsm[np.arange(12), np.where(kept, target, 0)], 0.0)
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / kept.sum()}[reduction]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("layout", [LAYOUTS[1], LAYOUTS[3], OTHER_AXES[5]])
def test_float16_inputs(rng, layout, probabilities, reduction):
    x = make_logits(rng, layout.shape, np.float16)
    if probabilities:
        target = make_probability_target(rng, layout, np.float16)
    else:
        target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    weight = rng.uniform(0.5, 2.0, layout.num_classes).astype(np.float16)
    kwargs = dict(weight=weight, axis=layout.axis, label_smoothing=0.1)
    got = check_loss(x, target, reduction, count_rows(layout), dtype=np.float16, **kwargs)
    as_float32 = fx.cross_entropy(
        x.astype(np.float32),
        target.astype(np.float32) if probabilities else target,
        reduction=reduction,
        **dict(kwargs, weight=weight.astype(np.float32)),
    )
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), as_float32, rtol=1e-3, atol=1e-3)


def _reversed_view(a):
    """A view with a negative stride along axis 0 holding the values of ``a``."""
    return np.ascontiguousarray(a[::-1])[::-1]


def layout_variants(x, target, weight):
    """(name, x, target, weight) in other memory layouts with the same values."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1]) + x.shape[2:], dtype=x.dtype)
    wide[:, ::2] = x
    padded = np.zeros((x.shape[0] + 4,) + x.shape[1:], dtype=x.dtype)
    padded[2:-2] = x
    target_padded = np.zeros((target.shape[0] * 3,) + target.shape[1:], dtype=target.dtype)
    target_padded[::3] = target
    weight_padded = np.zeros(2 * weight.shape[0], dtype=weight.dtype)
    weight_padded[1::2] = weight
    return [
        ("fortran", np.asfortranarray(x), np.asfortranarray(target), weight),
        ("strided-classes", wide[:, ::2], target, weight),
        ("sliced-rows", padded[2:-2], target_padded[::3], weight_padded[1::2]),
        ("negative-strides", _reversed_view(x), _reversed_view(target), _reversed_view(weight)),
    ]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,axis", [((9, 13), None), ((6, 13, 5), None), ((6, 5, 13), -1), ((13, 6), 0)])
def test_any_memory_layout(rng, shape, axis, reduction, dtype):
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype)
    options = Options(weight=True, ignore_some_rows=True, label_smoothing=0.1)
    target = make_index_target(rng, layout, options)
    weight = rng.uniform(0.5, 2.0, layout.num_classes).astype(dtype)
    kwargs = dict(axis=axis, label_smoothing=0.1)
    contiguous = fx.cross_entropy(x, target, weight, reduction=reduction, **kwargs)
    for name, xv, tv, wv in layout_variants(x, target, weight):
        np.testing.assert_array_equal(xv, x)
        np.testing.assert_array_equal(tv, target)
        got = check_loss(xv, tv, reduction, count_rows(layout), weight=wv, **kwargs)
        if reduction == "none":
            assert got.flags.c_contiguous, name
        assert_loss_close(got, upcast(contiguous), dtype, reduction, count_rows(layout))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((9, 13), None), ((6, 5, 13), -1)])
def test_probability_targets_in_any_memory_layout(rng, shape, axis, dtype):
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype)
    y = make_probability_target(rng, layout, dtype)
    check_loss(np.asfortranarray(x), np.asfortranarray(y), "none", count_rows(layout), axis=axis)
    check_loss(x[::-1], y[::-1], "none", count_rows(layout), axis=axis)
    check_loss(np.asfortranarray(x), y[::-1][::-1], "mean", count_rows(layout), axis=axis)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_accepts_python_sequences(reduction):
    x = [[0.5, -1.0, 2.0], [3.0, 1.0, 0.0]]
    target = [2, 0]
    got = check_loss(x, target, reduction, 2, weight=[1.0, 2.0, 0.5])
    assert np.asarray(got).dtype == np.float64


@pytest.mark.parametrize(
    "target",
    [np.int64(2), 2, np.array(2, dtype=np.int32), np.array([2])],
    ids=["np-int", "int", "0-d", "(1,)"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_dimensional_input(rng, target, reduction):
    x = make_logits(rng, (5,), np.float32)
    got = check_loss(x, target, reduction, 1)
    assert np.shape(got) == ()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("num_classes", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 257, 1000, 1025])
def test_class_counts(rng, num_classes, dtype):
    for layout in (Layout((7, num_classes), None), Layout((3, num_classes, 4), None)):
        x = make_logits(rng, layout.shape, dtype)
        target = make_index_target(rng, layout)
        for reduction in REDUCTIONS:
            check_loss(x, target, reduction, count_rows(layout), label_smoothing=0.1)
        y = make_probability_target(rng, layout, dtype)
        check_loss(x, y, "none", count_rows(layout))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("shape,axis", [((3000, 37), None), ((8, 37, 300), None), ((6, 500, 37), -1)])
def test_many_rows(rng, shape, axis, probabilities, dtype):
    """Large enough to be split between threads."""
    layout = Layout(shape, axis)
    x = make_logits(rng, shape, dtype)
    if probabilities:
        target = make_probability_target(rng, layout, dtype)
    else:
        target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    weight = rng.uniform(0.5, 2.0, 37).astype(dtype)
    for reduction in REDUCTIONS:
        check_loss(x, target, reduction, count_rows(layout), weight=weight, axis=axis, label_smoothing=0.05)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [np.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_is_a_numpy_scalar_of_the_input_dtype(rng, reduction, dtype):
    x = make_logits(rng, (4, 3), dtype)
    got = fx.cross_entropy(x, np.array([0, 1, 2, 1]), reduction=reduction)
    assert type(got) is np.dtype(dtype).type


def test_default_reduction_is_mean_and_default_ignore_index_is_minus_100(rng):
    x = make_logits(rng, (4, 3))
    target = np.array([0, -100, 2, 1])
    np.testing.assert_allclose(
        fx.cross_entropy(x, target), fx.cross_entropy(x, target, reduction="sum") / 3, rtol=1e-14
    )


def test_label_smoothing_one_ignores_the_target(rng):
    x = make_logits(rng, (6, 5))
    a = fx.cross_entropy(x, np.array([0, 1, 2, 3, 4, 0]), label_smoothing=1.0, reduction="none")
    b = fx.cross_entropy(x, np.array([4, 3, 2, 1, 0, 1]), label_smoothing=1.0, reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-14)
    np.testing.assert_allclose(a, -ref.log_softmax(x).mean(axis=1), rtol=1e-12)


def test_zero_weight_class_rows_count_for_nothing(rng):
    x = make_logits(rng, (6, 3))
    target = np.array([0, 1, 2, 0, 1, 2])
    w = np.array([1.0, 0.0, 2.0])
    got = fx.cross_entropy(x, target, w, reduction="none")
    assert np.all(got[[1, 4]] == 0)
    np.testing.assert_allclose(fx.cross_entropy(x, target, w), got.sum() / 6.0, rtol=1e-12)


def two_class_logits(rng, rows, dtype):
    """Logits of two classes with special rows: infinities, NaN, masks, huge values, ties."""
    x = make_logits(rng, (rows, 2), dtype)
    special = [np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0]
    for row in rng.choice(rows, size=rows // 10, replace=False):
        x[row, rng.integers(0, 2)] = rng.choice(special)
    x[rows // 2] = x[rows // 2, 0]  # a tie
    return x


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 0, 1])
@pytest.mark.parametrize("rows", [1, 7, 128, 1000])
def test_two_contiguous_classes_give_the_general_tiles_bits(rng, rows, ignore_index, reduction, dtype):
    """Two contiguous classes take a loop of their own; a strided view of the same logits takes the
    tile of few classes (whose bits are the general tile's, see the test below). The same results to
    the last bit (NaN's sign aside), and the reference's values."""
    x = two_class_logits(rng, rows, dtype)
    target = rng.integers(0, 2, rows)
    target[rng.random(rows) < 0.2] = ignore_index
    padded = np.zeros((rows, 3), dtype)
    padded[:, :2] = x
    strided = padded[:, :2]
    got = fx.cross_entropy(x, target, reduction=reduction, ignore_index=ignore_index)
    general = fx.cross_entropy(strided, target, reduction=reduction, ignore_index=ignore_index)
    np.testing.assert_array_equal(got, general)
    finite_rows = np.isfinite(x).all(axis=1) & (np.abs(x) < 1e29).all(axis=1)
    check_loss(x[finite_rows], target[finite_rows], reduction, int(finite_rows.sum()), ignore_index=ignore_index)


@pytest.mark.parametrize("bad", [2, -1, 2**32, 2**32 + 1, -(2**32), -100 + 2**32])
def test_two_contiguous_classes_refuse_targets_whose_low_bits_look_valid(rng, bad):
    """The two-class loop compares the low 32 bits of a target; the check still sees all 64."""
    x = make_logits(rng, (300, 2), np.float32)
    target = rng.integers(0, 2, 300)
    target[201] = bad
    for reduction in REDUCTIONS:
        with pytest.raises(IndexError, match=rf"(?<![\d]){bad}(?![\d])"):
            fx.cross_entropy(x, target, reduction=reduction)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 0])
@pytest.mark.parametrize("classes", [1, 3, 4, 10, 21, 32])
@pytest.mark.parametrize("rows", [1, 31, 33, 128, 300])
def test_rows_of_few_classes_give_the_bits_of_an_inner_class_axis(rng, rows, classes, ignore_index, reduction, dtype):
    """Rows of few classes with the default options take a tile of their own (few_class_tile); the
    same logits with the class axis before an inner axis are read in place by the general tile
    (loss_tile). The same results to the last bit (NaN's sign aside), and the reference's values on
    the finite rows."""
    x = make_logits(rng, (rows, classes), dtype)
    special = [np.inf, -np.inf, np.nan, 1e30, -1e30]
    for row in rng.choice(rows, size=rows // 8, replace=False):
        x[row, rng.integers(0, classes)] = rng.choice(special)
    target = rng.integers(0, classes, rows)
    target[rng.random(rows) < 0.2] = ignore_index
    inner = np.ascontiguousarray(x.T)[None]  # (1, C, N): the class axis 1, N along the inner axis
    got = fx.cross_entropy(x, target, reduction=reduction, ignore_index=ignore_index)
    columns = fx.cross_entropy(inner, target[None], axis=1, reduction=reduction, ignore_index=ignore_index)
    np.testing.assert_array_equal(got, columns.reshape(np.shape(got)))
    finite_rows = (np.abs(x) < 1e29).all(axis=1)
    check_loss(x[finite_rows], target[finite_rows], reduction, int(finite_rows.sum()), ignore_index=ignore_index)


def aliased_inner_logits(rng, classes, dtype):
    """(2, C, H) logits whose classes lie a multiple of 4096 bytes apart (H = 4096 bytes' worth), so
    that their tiles are copied by their max pass; and the same values in a view whose classes lie
    H + 128 elements apart, read in place."""
    inner = 4096 // np.dtype(dtype).itemsize
    padded = np.zeros((2, classes, inner + 128), dtype)
    x = make_logits(rng, (2, classes, inner), dtype)
    special = [np.inf, -np.inf, np.nan, 1e30, -1e30]
    for _ in range(12):
        x[rng.integers(0, 2), rng.integers(0, classes), rng.integers(0, inner)] = rng.choice(special)
    padded[..., :inner] = x
    view = padded[..., :inner]
    assert view.strides[1] == (inner + 128) * np.dtype(dtype).itemsize
    return x, view


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("options", ["plain", "ignore", "weight", "smoothing", "z_loss", "probability"])
@pytest.mark.parametrize("classes", [7, 8, 21, 32, 33])
def test_tiles_copied_along_an_inner_axis_give_the_bits_of_tiles_read_in_place(rng, classes, options, dtype):
    """Tiles along an inner axis whose classes fall into the same cache sets are copied by their max
    pass and read from the copy (8 to 32 classes); the same values read in place (classes not so far
    apart) give the same results to the last bit (NaN's sign aside): loss, row losses, gradient and the
    loss class's backward. The finite rows also match the reference."""
    x, view = aliased_inner_logits(rng, classes, dtype)
    kwargs = {"axis": 1}
    if options == "probability":
        target = make_probability_target(rng, Layout(x.shape, 1), dtype)
    else:
        target = rng.integers(0, classes, (2, x.shape[2]))
    if options == "ignore":
        target[rng.random(target.shape) < 0.2] = 0
        kwargs["ignore_index"] = 0
    elif options == "weight":
        kwargs["weight"] = rng.uniform(0.25, 2.0, classes).astype(dtype)
    elif options == "smoothing":
        kwargs["label_smoothing"] = 0.1
    elif options == "z_loss":
        kwargs["z_loss"] = 1e-3
    for reduction in REDUCTIONS:
        got = fx.cross_entropy(x, target, reduction=reduction, **kwargs)
        np.testing.assert_array_equal(got, fx.cross_entropy(view, target, reduction=reduction, **kwargs))
        loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction, **kwargs)
        loss_in_place, grad_in_place = fx.cross_entropy_with_grad(view, target, reduction=reduction, **kwargs)
        np.testing.assert_array_equal(loss, loss_in_place)
        np.testing.assert_array_equal(grad, grad_in_place)
    weight = kwargs.pop("weight", None)
    copied, in_place = fx.CrossEntropyLoss(weight, **kwargs), fx.CrossEntropyLoss(weight, **kwargs)
    np.testing.assert_array_equal(copied(x, target), in_place(view, target))
    np.testing.assert_array_equal(copied.backward(), in_place.backward())
    finite = (np.abs(x) < 1e29).all(axis=1)  # (2, H): the rows without a special value
    rows = np.moveaxis(x, 1, -1)[finite]
    row_targets = target[finite] if options != "probability" else np.moveaxis(target, 1, -1)[finite]
    if options != "z_loss":  # the reference has no z-loss (test_z_loss.py checks it)
        kwargs["axis"] = -1
        check_loss(rows, row_targets, "none", int(finite.sum()), weight=weight, **kwargs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("options", ["plain", "ignore", "weight", "smoothing", "probability"])
def test_a_streamed_gradient_gives_the_bits_of_ordinary_stores(rng, options, dtype):
    """A gradient of 16 MiB or more whose tiles along an inner axis are copied is written by streaming
    stores, where its rows lie on 64-byte lines: the library's own result, or an aligned out= array.
    Into an out= array off a line, the same call stores as usual: the same bits either way, and the
    loss class's backward gives them too; the values match the reference."""
    itemsize = np.dtype(dtype).itemsize
    batch = (16 << 20) // (21 * 4096) + 1  # classes 4096 bytes apart: copied tiles
    inner = 4096 // itemsize
    x = make_logits(rng, (batch, 21, inner), dtype)
    kwargs = {"axis": 1}
    if options == "probability":
        target = make_probability_target(rng, Layout(x.shape, 1), dtype)
    else:
        target = rng.integers(0, 21, (batch, inner))
    if options == "ignore":
        target[rng.random(target.shape) < 0.2] = 0
        kwargs["ignore_index"] = 0
    elif options == "weight":
        kwargs["weight"] = rng.uniform(0.25, 2.0, 21).astype(dtype)
    elif options == "smoothing":
        kwargs["label_smoothing"] = 0.1
    loss, grad = fx.cross_entropy_with_grad(x, target, **kwargs)
    assert grad.nbytes >= fx._core.OWN_RESULT_BYTES and grad.ctypes.data % 64 == 0
    padded = np.empty(x.size * itemsize + 64, np.uint8)
    start = -padded.ctypes.data % 64
    for offset in (start, start + 16):  # on a line (streamed), and off one (ordinary stores)
        out = padded[offset : offset + x.size * itemsize].view(dtype).reshape(x.shape)
        out[...] = np.nan
        loss_out, grad_out = fx.cross_entropy_with_grad(x, target, out=out, **kwargs)
        assert grad_out is out
        np.testing.assert_array_equal(loss_out, loss)
        np.testing.assert_array_equal(grad_out, grad)
    weight = kwargs.pop("weight", None)
    criterion = fx.CrossEntropyLoss(weight, **kwargs)
    np.testing.assert_array_equal(criterion(x, target), loss)
    np.testing.assert_array_equal(criterion.backward(), grad)
    expected = ref.cross_entropy_grad(x.astype(np.float64), target, weight, **kwargs)
    assert_close(grad, expected, dtype)


@pytest.mark.parametrize("classes", [3, 10, 32])
@pytest.mark.parametrize("bad", [-1, 32, 2**32 + 3, -(2**32), -100 + 2**32])
def test_rows_of_few_classes_refuse_invalid_targets(rng, classes, bad):
    """Rows of few classes with the default options take a tile of their own; an invalid target
    anywhere (here in the second tile, whose low 32 bits may look valid) still fails the call."""
    bad = bad if bad != 32 else classes
    x = make_logits(rng, (300, classes), np.float32)
    target = rng.integers(0, classes, 300)
    target[201] = bad
    for reduction in REDUCTIONS:
        with pytest.raises(IndexError, match=rf"(?<![\d]){bad}(?![\d])"):
            fx.cross_entropy(x, target, reduction=reduction)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", INDEX_OPTIONS)
@pytest.mark.parametrize(
    "layout",
    [Layout((70, 100), None), Layout((3, 5, 100), -1), Layout((2, 100, 3), None)],
    ids=["N,C", "B,T,V-axis=-1", "N,C,d1"],
)
def test_more_classes_than_a_tile_takes(rng, layout, options, reduction, dtype):
    """100 classes: whole rows (the rows strategy) with every option, where the 37 classes of the
    main grid go through tiles (see the Note on how many classes a transposed tile takes)."""
    x = make_logits(rng, layout.shape, dtype)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, dtype)
    check_loss(x, target, reduction, count_rows(layout), **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("classes", [65, 100, 1000])
@pytest.mark.parametrize("rows", [1, 31, 32, 33, 64, 65, 200, 1500])
def test_whole_rows_with_default_options_take_their_logs_together(rng, rows, classes, reduction, dtype):
    """Whole rows with the default options take their logs together: a reduced loss multiplies the
    rows' sums of exponentials, 32 at a time, and takes one log per product; row losses take the
    logs of 64 rows in one pass. Row counts on either side of those groups, ignored rows, a row of
    NaN or of -inf spoiling its own loss (and so a reduced one), a -inf target logit giving inf,
    and the same results for any thread count."""
    x = make_logits(rng, (rows, classes), dtype, scale=4.0)
    target = rng.integers(0, classes, rows)
    target[rng.random(rows) < 0.2] = -100
    check_loss(x, target, reduction, rows)
    one = fx.cross_entropy(x, target, reduction=reduction)
    before = fx.get_num_threads()
    try:
        fx.set_num_threads(1)
        np.testing.assert_array_equal(fx.cross_entropy(x, target, reduction=reduction), one)
    finally:
        fx.set_num_threads(before)
    middle = rows // 2
    kept = target.copy()
    kept[middle] = 0
    for bad in (np.nan, -np.inf):
        spoiled = x.copy()
        spoiled[middle] = bad
        got = np.asarray(fx.cross_entropy(spoiled, kept, reduction=reduction))
        if reduction == "none":
            assert np.isnan(got[middle]), (bad, got[middle])
            others = np.delete(got, middle)
            assert np.isfinite(others).all()
        else:
            assert np.isnan(got), (bad, got)
    masked = x.copy()
    masked[middle, 0] = -np.inf
    got = np.asarray(fx.cross_entropy(masked, kept, reduction=reduction))
    assert (got[middle] if reduction == "none" else got) == np.inf
