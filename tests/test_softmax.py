"""log_softmax, softmax and logsumexp against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import FLOAT_DTYPES, LAYOUTS, OTHER_AXES, assert_close, make_logits

FUNCTIONS = ["log_softmax", "softmax", "logsumexp"]
ELEMENTWISE = ["log_softmax", "softmax"]
CLASS_COUNTS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257, 1000, 1025]


def expected_shape(function, shape, axis):
    if function == "logsumexp":
        axis = axis % len(shape)
        return shape[:axis] + shape[axis + 1 :]
    return shape


def check(function, x, axis, dtype=None):
    """Call fastxent and the reference on ``x`` and compare."""
    dtype = x.dtype if dtype is None else dtype
    got = getattr(fx, function)(x, axis=axis)
    expected = getattr(ref, function)(np.asarray(x, dtype=np.float64), axis=axis)
    assert isinstance(got, (np.ndarray, np.generic))
    assert_close(got, expected, dtype)
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_matches_reference(rng, function, layout, dtype):
    x = make_logits(rng, layout.shape, dtype)
    got = check(function, x, layout.class_axis)
    assert got.shape == expected_shape(function, layout.shape, layout.class_axis)
    if function != "logsumexp":
        assert got.flags.c_contiguous


@pytest.mark.parametrize("function", FUNCTIONS)
def test_default_axis_is_last(rng, function):
    x = make_logits(rng, (4, 5, 6))
    np.testing.assert_array_equal(getattr(fx, function)(x), getattr(fx, function)(x, axis=-1))
    np.testing.assert_allclose(getattr(fx, function)(x), getattr(ref, function)(x, axis=2), rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_class_counts(rng, function, num_classes, dtype):
    """Every remainder modulo the vector width, with the class axis contiguous and strided."""
    check(function, make_logits(rng, (5, num_classes), dtype), -1)
    check(function, make_logits(rng, (3, num_classes, 4), dtype), 1)


@pytest.mark.parametrize("num_classes", [7, 50])
@pytest.mark.parametrize("function", ELEMENTWISE)
def test_tiles_of_a_large_result(rng, function, num_classes):
    """Small rows whose result is 8 MiB or more: each tile's rows are written while the next tile's
    are prefetched; every row against the reference, the last tile a partial one."""
    num_rows = (8 << 20) // (4 * num_classes) + 37
    x = make_logits(rng, (num_rows, num_classes), np.float32)
    got = check(function, x, 1)
    assert got.nbytes >= 8 << 20


@pytest.mark.parametrize("rows_kind", ["contiguous", "columns_sliced", "every_other_row"])
@pytest.mark.parametrize("num_rows", [7, 127, 128, 129, 300])
@pytest.mark.parametrize("function", ELEMENTWISE)
def test_tiles_of_small_class_counts(rng, function, num_rows, rows_kind):
    """Rows of up to 32 classes (64 for float32 with AVX2 and AVX-512) go through transposed
    tiles of 8 x 8 blocks; every class count on either side of those limits, tile remainders and
    rows that are not back to back."""
    for num_classes in range(1, 67):
        wide = make_logits(rng, (2 * num_rows, num_classes + 3), np.float32)
        x = {
            "contiguous": np.ascontiguousarray(wide[:num_rows, :num_classes]),
            "columns_sliced": wide[:num_rows, :num_classes],
            "every_other_row": wide[::2, :num_classes],
        }[rows_kind]
        check(function, x, -1)


@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES[2:4])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_float16_is_computed_in_float32_and_returned_as_float16(rng, function, layout):
    x = make_logits(rng, layout.shape, np.float16)
    got = check(function, x, layout.class_axis, dtype=np.float16)
    as_float32 = getattr(fx, function)(x.astype(np.float32), axis=layout.class_axis)
    np.testing.assert_allclose(got.astype(np.float32), as_float32, rtol=1e-3, atol=1e-3)


def strided_variants(x):
    """The same values in other memory layouts: (name, array)."""
    wide = np.zeros((x.shape[0], 2 * x.shape[1]) + x.shape[2:], dtype=x.dtype)
    wide[:, ::2] = x
    padded = np.zeros((x.shape[0] + 3,) + x.shape[1:], dtype=x.dtype)
    padded[1:-2] = x
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]
    return [
        ("fortran", np.asfortranarray(x)),
        ("every-other-class", wide[:, ::2]),
        ("sliced-rows", padded[1:-2]),
        ("negative-strides", reversed_rows),
        ("read-only", _read_only(x.copy())),
    ]


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_any_memory_layout(rng, function, axis, dtype):
    x = make_logits(rng, (6, 19, 5), dtype)
    contiguous = getattr(fx, function)(x, axis=axis)
    for name, variant in strided_variants(x):
        np.testing.assert_array_equal(variant, x)
        got = check(function, variant, axis)
        assert got.flags.c_contiguous, name
        assert_close(got, contiguous.astype(np.float64), dtype)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_broadcast_input_with_zero_strides(rng, function):
    row = make_logits(rng, (1, 11))
    x = np.broadcast_to(row, (4, 11))
    got = check(function, x, -1)
    assert np.all(got == got[0])


@pytest.mark.parametrize("function", FUNCTIONS)
def test_accepts_python_sequences(function):
    values = [[0.5, -1.0, 2.0], [3.0, 3.0, 3.0]]
    got = getattr(fx, function)(values)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, getattr(ref, function)(np.array(values)), rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", ELEMENTWISE)
def test_out_is_filled_and_returned(rng, function, dtype):
    x = make_logits(rng, (5, 3, 9), dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    result = getattr(fx, function)(x, axis=1, out=out)
    assert result is out
    assert_close(out, getattr(ref, function)(x.astype(np.float64), axis=1), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(37, 11), (3, 2, 700), (300, 2), (0, 5), (4, 0)])
def test_out_on_the_common_call_gives_the_general_paths_bits(rng, function, dtype, shape):
    """A valid out= of a C-contiguous array along its last axis is taken by _core directly, as is an
    in-place result; any other out= is left to the general path (None), which raises the error.
    The fast and the general path write the same bits."""
    from fastxent import _core

    code = {"log_softmax": 0, "softmax": 1}[function]
    x = make_logits(rng, shape, dtype) if 0 not in shape else np.zeros(shape, dtype)
    general = getattr(fx, function)(np.asfortranarray(x), axis=-1)
    out = np.full(shape, np.nan, dtype)
    assert _core.softmax_fast(x, code, -1, out) is out
    np.testing.assert_array_equal(out, general)
    out[...] = np.nan
    assert getattr(fx, function)(x, axis=len(shape) - 1, out=out) is out
    np.testing.assert_array_equal(out, general)
    in_place = x.copy()
    assert _core.softmax_fast(in_place, code, -1, in_place) is in_place
    np.testing.assert_array_equal(in_place, general)
    other = np.float64 if dtype == np.float32 else np.float32
    read_only = np.empty(shape, dtype)
    read_only.flags.writeable = False
    refused = [np.empty(shape, other), np.empty(shape + (1,), dtype), np.empty(shape[1:], dtype), read_only, [0.0]]
    if min(shape) > 1:
        refused += [np.empty(shape, dtype, order="F"), np.empty(shape[::-1], dtype)]
    for bad in refused:
        assert _core.softmax_fast(x, code, -1, bad) is None
    assert _core.softmax_fast(x, 2, -1, np.empty(shape[:-1], dtype)) is None, "logsumexp takes no out="
    if x.size:
        buffer = np.zeros((x.size + shape[-1],), dtype)
        shifted = buffer[shape[-1] :].reshape(shape)
        shifted[...] = x
        assert _core.softmax_fast(shifted, code, -1, buffer[: x.size].reshape(shape)) is None
        assert _core.softmax_fast(shifted, code, -1, shifted[...]) is not None, "a view of the same elements"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [np.float16])
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("shape, axis", [((4, 10, 8), 1), ((4, 10, 8), 0), ((2, 3, 5, 7), 2), ((6, 9), 0),
                                         ((3, 0, 4), 1), ((0, 5, 3), 1), ((3, 4, 0), 1)])
def test_common_call_along_an_axis_not_last_gives_the_general_paths_bits(rng, function, dtype, shape, axis):
    """A C-contiguous array along an axis that is not its last is taken by _core directly too (the axes
    after it are the rows' inner axis); given as a negative axis below -1 it takes the general path.
    Same bits, and out= as on the last axis."""
    from fastxent import _core

    code = {"log_softmax": 0, "softmax": 1, "logsumexp": 2}[function]
    x = make_logits(rng, shape, dtype) if 0 not in shape else np.zeros(shape, dtype)
    fast = _core.softmax_fast(x, code, axis, None)
    assert fast is not None or (dtype != np.float32 and dtype != np.float64 and shape[axis] == 0)
    general = getattr(fx, function)(x, axis=axis - len(shape))
    got = getattr(fx, function)(x, axis=axis)
    assert got.dtype == general.dtype and got.shape == general.shape
    np.testing.assert_array_equal(got, general)
    if fast is not None:
        np.testing.assert_array_equal(fast, general)
    expected_shape = shape[:axis] + shape[axis + 1 :] if function == "logsumexp" else shape
    assert got.shape == expected_shape
    if function != "logsumexp":
        out = np.full(shape, np.nan, dtype)
        assert getattr(fx, function)(x, axis=axis, out=out) is out
        np.testing.assert_array_equal(out, general)
    if x.size:
        assert_close(got, getattr(ref, function)(x.astype(np.float64), axis=axis), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_log_softmax_masks_and_all_masked_rows(dtype):
    x = np.array(
        [[1.0, -np.inf, 2.0, -np.inf], [-np.inf] * 4, [0.0, 0.0, -np.inf, 0.0]],
        dtype=dtype,
    )
    lsm = fx.log_softmax(x)
    sm = fx.softmax(x)
    assert lsm[0, 1] == -np.inf and lsm[0, 3] == -np.inf and lsm[2, 2] == -np.inf
    assert sm[0, 1] == 0 and sm[2, 2] == 0
    assert np.all(np.isnan(lsm[1])), "a row of all -inf gives NaN, as in PyTorch"
    assert np.all(np.isnan(sm[1]))
    assert_close(lsm, ref.log_softmax(x.astype(np.float64)), dtype)
    assert_close(sm, ref.softmax(x.astype(np.float64)), dtype)
    np.testing.assert_allclose(lsm[2, [0, 1, 3]], np.log(1 / 3), rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", [3, 40])
def test_logsumexp_infinities_and_nan(dtype, width):
    x = np.tile(np.linspace(-2.0, 3.0, width), (5, 1)).astype(dtype)
    x[0] = -np.inf
    x[1, 1] = np.inf
    x[2, 2] = np.nan
    x[3, 1] = np.inf
    x[3, 2] = -np.inf
    got = fx.logsumexp(x)
    assert got[0] == -np.inf, "all -inf gives -inf"
    assert got[1] == np.inf and got[3] == np.inf, "any +inf gives +inf"
    assert np.isnan(got[2]), "NaN propagates"
    assert_close(got, ref.logsumexp(x.astype(np.float64)), dtype)


@pytest.mark.parametrize("function", ELEMENTWISE)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_propagates_within_its_row_only(function, dtype):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype=dtype)
    got = getattr(fx, function)(x)
    assert np.all(np.isnan(got[0]))
    assert np.all(np.isfinite(got[1]))


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "shape,axis", [((3, 0), 1), ((3, 0), -1), ((0, 4), 1), ((0, 4), 0), ((0,), 0), ((2, 0, 3), 1)]
)
def test_empty(function, shape, axis):
    x = np.zeros(shape, dtype=np.float32)
    got = getattr(fx, function)(x, axis=axis)
    assert got.dtype == np.float32
    assert got.shape == expected_shape(function, shape, axis)
    if function == "logsumexp":
        assert np.all(got == -np.inf), "logsumexp over an empty axis is -inf"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_huge_logits(rng, function, dtype):
    x = (rng.choice([-1e4, 1e4], size=(6, 33)) + rng.standard_normal((6, 33))).astype(dtype)
    got = check(function, x, -1)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_one_row_of_200000_classes(rng, function, dtype):
    x = make_logits(rng, (200_000,), dtype)
    check(function, x, 0)
    check(function, x.reshape(1, -1), 1)


def test_log_softmax_subtracts_the_max_before_the_log_sum(rng):
    # Near 1000, x - max is exact in float32 but max + log(sum) is rounded to
    # a spacing of 6e-5: x - (max + log(sum)) would miss the tolerance.
    x = np.float32(1000.0) + make_logits(rng, (64, 50), np.float32)
    assert_close(fx.log_softmax(x), ref.log_softmax(x.astype(np.float64)), np.float32)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 128, 1000])
def test_log_softmax_of_two_contiguous_classes_gives_the_general_tiles_bits(rng, rows, dtype):
    """Two contiguous classes take a loop of their own; a strided view of the same logits takes the
    general tiles. The same bits (NaN's sign aside), in place too, and the reference's values."""
    x = make_logits(rng, (rows, 2), dtype)
    for row in rng.choice(rows, size=rows // 5, replace=False):
        x[row, rng.integers(0, 2)] = rng.choice([np.inf, -np.inf, np.nan, 1e30, -1e30])
    if rows > 2:
        x[0] = -np.inf  # a row of -inf gives NaN
        x[1] = x[1, 0]  # a tie
    got = fx.log_softmax(x)
    padded = np.zeros((rows, 3), dtype)
    padded[:, :2] = x
    np.testing.assert_array_equal(got, fx.log_softmax(padded[:, :2]))
    in_place = x.copy()
    fx.log_softmax(in_place, out=in_place)
    np.testing.assert_array_equal(in_place, got)
    finite = np.isfinite(x).all(axis=1) & (np.abs(x) < 1e29).all(axis=1)
    assert_close(got[finite], ref.log_softmax(x[finite].astype(np.float64)), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [7, 8, 21, 32, 33])
@pytest.mark.parametrize("function", FUNCTIONS)
def test_tiles_copied_along_an_inner_axis_give_the_bits_of_tiles_read_in_place(rng, function, classes, dtype):
    """Tiles along an inner axis whose classes fall into the same cache sets (a multiple of 4096 bytes
    apart) are copied by their max pass and read from the copy (8 to 32 classes); the same values
    in a view whose classes lie further apart are read in place. The same results to the last bit
    (NaN's sign aside), and the reference's on finite logits."""
    inner = 4096 // np.dtype(dtype).itemsize
    x = make_logits(rng, (2, classes, inner), dtype)
    padded = np.zeros((2, classes, inner + 128), dtype)
    padded[..., :inner] = x
    view = padded[..., :inner]
    check(function, x, 1)
    np.testing.assert_array_equal(getattr(fx, function)(x, axis=1), getattr(fx, function)(view, axis=1))
    x[0, 0, 5] = np.inf
    x[1, classes - 1, 200] = np.nan
    x[1, 2, 300] = -1e30
    padded[..., :inner] = x
    np.testing.assert_array_equal(getattr(fx, function)(x, axis=1), getattr(fx, function)(view, axis=1))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [65, 100, 160, 161])
@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
def test_whole_rows_take_their_logs_together(rng, rows, classes, dtype):
    """log_softmax, softmax and logsumexp of float32 rows of up to 160 classes take their logs 64
    rows at a time (see the Note on logs of whole rows taken together): row counts on either side
    of those groups, rows of -inf, +inf and NaN among them, in place as well."""
    x = make_logits(rng, (rows, classes), dtype, scale=4.0)
    special = rows // 2
    x[special] = -np.inf
    if rows > 2:
        x[special + 1, 3] = np.inf
        x[special - 1, 5] = np.nan
    lse = fx.logsumexp(x)
    assert lse[special] == -np.inf
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(ref.logsumexp(x.astype(np.float64))))
    finite = np.isfinite(x).all(axis=1)
    assert_close(lse[finite], ref.logsumexp(x[finite].astype(np.float64)), dtype)
    for function in ELEMENTWISE:
        got = getattr(fx, function)(x)
        assert np.isnan(got[special]).all()
        assert_close(got[finite], getattr(ref, function)(x[finite].astype(np.float64)), dtype)
        in_place = x.copy()
        getattr(fx, function)(in_place, out=in_place)
        np.testing.assert_array_equal(in_place, got)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [2048, 3001])
def test_a_streamed_log_softmax_gives_the_bits_of_ordinary_stores(rng, classes, dtype):
    """A log_softmax of 16 MiB or more with rows of 1024 classes or more is written by streaming
    stores (whole 64-byte lines; the first and last elements of a row as usual): the same bits as the
    same rows computed with ordinary stores (a call under 16 MiB), into a fresh result, an out= array
    on a line or off one, or the logits themselves; the values match the reference."""
    rows = (16 << 20) // (classes * np.dtype(dtype).itemsize) + 3
    x = make_logits(rng, (rows, classes), dtype)
    x[1, 5] = np.inf
    x[2, 7] = np.nan
    x[3] = -np.inf
    got = fx.log_softmax(x)
    assert got.nbytes >= fx._core.OWN_RESULT_BYTES
    np.testing.assert_array_equal(got[:64], fx.log_softmax(x[:64]))  # under 16 MiB: not streamed
    np.testing.assert_array_equal(got[-64:], fx.log_softmax(x[-64:]))
    itemsize = np.dtype(dtype).itemsize
    padded = np.empty(x.size * itemsize + 64, np.uint8)
    start = -padded.ctypes.data % 64
    for offset in (start, start + itemsize):
        out = padded[offset : offset + x.size * itemsize].view(dtype).reshape(x.shape)
        assert fx.log_softmax(x, out=out) is out
        np.testing.assert_array_equal(out, got)
    in_place = x.copy()
    fx.log_softmax(in_place, out=in_place)
    np.testing.assert_array_equal(in_place, got)
    finite = np.isfinite(x).all(axis=1)
    assert_close(got[finite][::37], ref.log_softmax(x[finite][::37].astype(np.float64), axis=-1), dtype)


@pytest.mark.parametrize("classes", [33, 50, 64])
def test_streamed_tiles_give_the_bits_of_ordinary_stores(rng, classes):
    """Rows of 33 to 64 float32 classes (transposed tiles) whose result is 16 MiB or more are written
    by streaming stores; the same rows in a smaller call, written as usual, give the same bits: the
    gradient, softmax and log_softmax, into a fresh result or an out= array off a 64-byte line."""
    rows = (16 << 20) // (classes * 4) + 200
    x = make_logits(rng, (rows, classes), np.float32)
    target = rng.integers(0, classes, rows)
    target[::7] = -100
    part = slice(rows - 1000, rows)
    for function in (fx.log_softmax, fx.softmax):
        got = function(x)
        np.testing.assert_array_equal(got[part], function(x[part]))
        out = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)
        np.testing.assert_array_equal(function(x, out=out), got)
    grad = fx.cross_entropy_grad(x, target, reduction="sum")
    np.testing.assert_array_equal(grad[part], fx.cross_entropy_grad(x[part], target[part], reduction="sum"))
    assert_close(grad[part], ref.cross_entropy_grad(x[part].astype(np.float64), target[part], reduction="sum"),
                 np.float32)
