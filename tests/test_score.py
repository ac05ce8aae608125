"""score and score_spans against a float64 NumPy reference written from their definitions, and
against torch (log_softmax + gather, argmax, rank by comparison, Categorical entropy) when installed."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx
from cases import FLOAT_DTYPES, INDEX_DTYPES, tolerance

NEG_INF = -np.inf

# ---------------------------------------------------------------------------------------------------
# The float64 reference.


def reference_score(x, target, axis=-1):
    """Every field of ``score`` in float64, from the definitions: log_softmax = (x - max) - log(sum
    exp(x - max)); lse as SPEC's logsumexp; argmax as numpy.argmax; rank = #{c: x_c > x_t};
    entropy = -sum_{p > 0} p * log_softmax (= lse - sum p * x)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    target = np.asarray(target, dtype=np.int64)
    candidates = target.ndim == x.ndim
    t = target if candidates else target[..., None]
    with np.errstate(all="ignore"):
        peak = np.max(x, axis=-1, keepdims=True)  # NaN propagates: every result of a NaN row is NaN
        shifted = x - peak
        log_sum = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
        log_softmax = shifted - log_sum
        lse = np.where(np.isfinite(peak), peak + log_sum, np.logaddexp.reduce(x, axis=-1, keepdims=True))[..., 0]
        p = np.exp(log_softmax)
        entropy = -np.sum(np.where(p == 0, 0.0, p * log_softmax), axis=-1)
    argmax = np.argmax(x, axis=-1)
    target_logit = np.take_along_axis(x, t, axis=-1)
    logprob = np.take_along_axis(log_softmax, t, axis=-1)
    rank = np.sum(x[..., None, :] > target_logit[..., :, None], axis=-1)
    is_greedy = t == argmax[..., None]
    if not candidates:
        logprob, rank, is_greedy = logprob[..., 0], rank[..., 0], is_greedy[..., 0]
    return dict(logprob=logprob, lse=lse, argmax=argmax, is_greedy=is_greedy, rank=rank, entropy=entropy)


def reference_spans(x, target, starts, lengths, axis=-1):
    """(logprob sum, all greedy, length) per span, from the reference over the rows in C order."""
    rows = reference_score(x, target, axis)
    logprob = rows["logprob"].reshape(-1)
    greedy = rows["is_greedy"].reshape(-1)
    sums = np.array([np.sum(logprob[s : s + n]) for s, n in zip(starts, lengths)], dtype=np.float64)
    all_greedy = np.array([bool(np.all(greedy[s : s + n])) for s, n in zip(starts, lengths)], dtype=bool)
    return sums, all_greedy, np.asarray(lengths, dtype=np.int64)


FLOAT_FIELDS = ("logprob", "lse", "entropy")
EXACT_FIELDS = ("argmax", "is_greedy", "rank")
DTYPES = {"argmax": np.int64, "is_greedy": np.bool_, "rank": np.int64}


def assert_score(got, x, target, axis=-1, dtype=None):
    """Every field: dtype, shape, C-contiguity, and value (floats within SPEC's tolerance)."""
    dtype = np.dtype(np.asarray(x).dtype if dtype is None else dtype)
    expected = reference_score(x, target, axis)
    assert isinstance(got, fx.Score)
    for field in FLOAT_FIELDS + EXACT_FIELDS:
        value = getattr(got, field)
        assert isinstance(value, np.ndarray), field
        assert value.shape == expected[field].shape, field
        assert value.flags.c_contiguous, field
        assert value.dtype == (dtype if field in FLOAT_FIELDS else np.dtype(DTYPES[field])), field
        if field in FLOAT_FIELDS:
            np.testing.assert_allclose(
                value.astype(np.float64), expected[field], equal_nan=True, err_msg=field, **tolerance(dtype)
            )
        else:
            np.testing.assert_array_equal(value, expected[field], err_msg=field)


def make_logits(rng, shape, dtype=np.float64, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def make_target(rng, row_shape, classes, candidates=None):
    shape = row_shape if candidates is None else row_shape + (candidates,)
    return rng.integers(0, classes, size=shape)


# (shape, class axis): contiguous rows, tiles across rows (inner > 1), small class counts (rows
# transposed into tiles), block boundaries of the row helpers (1024), and a long row.
LAYOUTS = [
    pytest.param((6, 37), -1, id="N,C"),
    pytest.param((3, 4, 37), -1, id="B,T,V-axis=-1"),
    pytest.param((4, 37, 3), 1, id="N,C,d-axis=1"),
    pytest.param((3, 37, 2, 3), 1, id="N,C,d1,d2-axis=1"),
    pytest.param((37,), 0, id="C"),
    pytest.param((37, 6), 0, id="C,N-axis=0"),
    pytest.param((300, 5), -1, id="many-rows-5-classes"),
    pytest.param((9, 1), -1, id="one-class"),
    pytest.param((2, 1, 5), 1, id="one-class-axis=1"),
    pytest.param((3, 2049), -1, id="C=2049"),
    pytest.param((2, 40000), -1, id="C=40000"),
    pytest.param((2, 300, 130), 1, id="N,C,d-two-tiles"),
]


def row_shape_of(shape, axis):
    axis = axis % len(shape)
    return shape[:axis] + shape[axis + 1 :]


# ---------------------------------------------------------------------------------------------------
# score


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_score_matches_reference(rng, shape, axis, dtype):
    x = make_logits(rng, shape, dtype)
    target = make_target(rng, row_shape_of(shape, axis), shape[axis])
    assert_score(fx.score(x, target, axis=axis), x, target, axis)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("candidates", [1, 4, 0])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_score_candidates(rng, shape, axis, candidates, dtype):
    """K candidates per row share one pass; each has its own logprob, is_greedy and rank."""
    x = make_logits(rng, shape, dtype)
    target = make_target(rng, row_shape_of(shape, axis), shape[axis], candidates)
    got = fx.score(x, target, axis=axis)
    assert got.logprob.shape == target.shape
    assert_score(got, x, target, axis)


def test_candidates_agree_with_single_targets(rng):
    x = make_logits(rng, (3, 5, 50), np.float32)
    target = make_target(rng, (3, 5), 50, 6)
    together = fx.score(x, target)
    for k in range(6):
        alone = fx.score(x, target[..., k])
        for field in ("logprob", "is_greedy", "rank"):
            np.testing.assert_array_equal(getattr(together, field)[..., k], getattr(alone, field))
        for field in ("lse", "argmax", "entropy"):
            np.testing.assert_array_equal(getattr(together, field), getattr(alone, field))


def test_default_axis_is_last(rng):
    x = make_logits(rng, (4, 5, 6))
    target = make_target(rng, (4, 5), 6)
    got = fx.score(x, target)
    assert_score(got, x, target, -1)
    np.testing.assert_array_equal(got.logprob, fx.score(x, target, axis=2).logprob)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_strided_and_fortran_inputs(rng, dtype):
    base = make_logits(rng, (8, 90), dtype)
    for x in (base[::2, ::3], base[:, 5:70], np.asfortranarray(base), base.T[:, ::-1].T):
        target = make_target(rng, x.shape[:1], x.shape[1])
        assert_score(fx.score(x, target), x, target)
    x = make_logits(rng, (4, 6, 40), dtype).transpose(1, 2, 0)  # class axis 1, strided
    target = make_target(rng, (6, 4), 40)
    assert_score(fx.score(x, target, axis=1), x, target, 1)


@pytest.mark.parametrize("target_dtype", INDEX_DTYPES)
def test_any_integer_target_dtype(rng, target_dtype):
    x = make_logits(rng, (5, 7), np.float32)
    target = make_target(rng, (5,), 7).astype(target_dtype)
    assert_score(fx.score(x, target), x, target)
    assert_score(fx.score(x, target.tolist()), x, target)


def test_float16_is_computed_in_float32(rng):
    x = make_logits(rng, (4, 33), np.float16)
    target = make_target(rng, (4,), 33)
    got = fx.score(x, target)
    assert_score(got, x.astype(np.float32), target, dtype=np.float32)


def test_result_is_a_frozen_named_tuple(rng):
    x = make_logits(rng, (2, 5))
    got = fx.score(x, [0, 1])
    assert isinstance(got, tuple)
    assert got._fields == ("logprob", "lse", "argmax", "is_greedy", "rank", "entropy")
    with pytest.raises(AttributeError):
        got.logprob = None
    logprob, lse, argmax, is_greedy, rank, entropy = got
    assert logprob is got.logprob and entropy is got.entropy


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, axis", [((4, 50), -1), ((4, 50, 3), 1), ((4, 6), -1)], ids=["rows", "tiles", "small"])
def test_ties(shape, axis, dtype):
    """argmax is the first index of the max; rank counts only strictly greater logits, so a target tied
    with the max has rank 0 but is greedy only at the first tied index."""
    classes = shape[axis]
    x = np.moveaxis(np.zeros(shape, dtype=dtype), axis, -1)
    x[..., :] = np.linspace(-1.0, 0.5, classes, dtype=dtype)
    x[0, ..., 2] = x[0, ..., 4] = 2.0  # two maxima
    x[1, ..., :] = 1.0  # every class tied
    x[2, ..., 3] = x[2, ..., 5] = 0.25  # tied below the max
    x = np.moveaxis(x, -1, axis)
    target = np.zeros(row_shape_of(shape, axis) + (4,), dtype=np.int64)
    target[..., :] = [2, 4, 3, 5]
    got = fx.score(x, target, axis=axis)
    assert_score(got, x, target, axis)
    first = (slice(0, 1),) + (slice(None),) * (len(row_shape_of(shape, axis)) - 1)
    assert np.all(got.argmax[first] == 2)
    assert np.all(got.rank[first][..., :2] == 0)
    assert np.all(got.is_greedy[first][..., 0]) and not np.any(got.is_greedy[first][..., 1])
    assert np.all(got.argmax[1] == 0) and np.all(got.rank[1] == 0) and not np.any(got.is_greedy[1])
    assert np.all(got.rank[2][..., 2] == got.rank[2][..., 3])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["rows", "tiles", "small"])
def test_masked_logits_give_finite_entropy(rng, layout, dtype):
    classes = 6 if layout == "small" else 70
    x = make_logits(rng, (5, classes), dtype)
    x[:, ::3] = NEG_INF  # masked classes
    x[3, :] = NEG_INF
    x[3, 1] = 0.5  # one class left: entropy 0
    target = np.array([[0, 1], [3, 4], [1, 2], [0, 1], [2, 4]])  # some masked targets
    if layout == "tiles":
        x, target, axis = np.ascontiguousarray(x.T), target.T.copy(), 0
        target = np.moveaxis(target, 0, -1).copy()
    else:
        axis = -1
    got = fx.score(x, target, axis=axis)
    assert_score(got, x, target, axis)
    assert np.all(np.isfinite(got.entropy)) and np.all(np.isfinite(got.lse))
    assert got.entropy[3] == 0
    masked = np.take_along_axis(np.moveaxis(x, axis, -1), target, -1) == NEG_INF
    assert np.all(got.logprob[masked] == NEG_INF)
    assert np.all(np.isfinite(got.logprob[~masked]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, axis", [((5, 40), -1), ((5, 40, 2), 1), ((5, 7), -1)], ids=["rows", "tiles", "small"])
def test_infinities_and_nan(shape, axis, dtype):
    """NaN: argmax is its first position (numpy.argmax) and the row's floats are NaN; a row of -inf has
    lse -inf, argmax 0 and NaN logprob (as log_softmax); +inf gives lse +inf."""
    classes = shape[axis]
    x = np.moveaxis(np.zeros(shape, dtype=dtype), axis, -1)
    x[..., :] = np.linspace(-2.0, 1.0, classes, dtype=dtype)
    x[0, ..., 4] = np.nan  # NaN before the max
    x[1, ..., classes - 1] = np.nan  # NaN after the max
    x[1, ..., 2] = 9.0
    x[2, ..., :] = NEG_INF
    x[3, ..., 5] = np.inf
    x[4, ..., :] = np.nan
    x = np.moveaxis(x, -1, axis)
    target = np.zeros(row_shape_of(shape, axis) + (2,), dtype=np.int64)
    target[..., :] = [2, 5]
    with np.errstate(all="ignore"):
        expected_argmax = np.argmax(np.moveaxis(x, axis, -1), axis=-1)
    got = fx.score(x, target, axis=axis)
    assert_score(got, x, target, axis)
    np.testing.assert_array_equal(got.argmax, expected_argmax)
    assert np.all(got.argmax[0] == 4) and np.all(got.argmax[1] == classes - 1)
    assert np.all(got.argmax[2] == 0) and np.all(got.argmax[3] == 5) and np.all(got.argmax[4] == 0)
    assert np.all(got.lse[2] == NEG_INF) and np.all(got.lse[3] == np.inf)
    assert np.all(np.isnan(got.lse[[0, 1, 4]]))
    assert np.all(np.isnan(got.logprob[[0, 1, 2, 3, 4]]))
    assert np.all(np.isnan(got.entropy[[0, 1, 2, 3, 4]]))


def test_argmax_late_in_a_long_row(rng):
    """The first-index search stops at the block holding the max: the max in each block position."""
    x = make_logits(rng, (12, 5000), np.float32)
    places = [0, 1, 1023, 1024, 1025, 2047, 2048, 4095, 4096, 4999, 3000, 17]
    for row, place in enumerate(places):
        x[row, place] = 100.0
        x[row, (place + 7) % 5000] = 100.0 if row % 2 else 99.0  # a tie after it in odd rows
    target = np.array(places)
    got = fx.score(x, target)
    assert_score(got, x, target)
    np.testing.assert_array_equal(got.argmax, [min(p, (p + 7) % 5000) if i % 2 else p for i, p in enumerate(places)])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("classes", [33, 64, 1000, 1031, 2049])
def test_argmax_and_rank_with_many_ties(rng, classes, dtype):
    """Logits from a few values: each row holds its max many times, in every vector lane and in the
    tail, so the first index must come from merging the lanes' first indices, and every rank counts
    ties as not greater. Some rows also hold -inf, +inf or a NaN."""
    x = rng.integers(0, 4, size=(40, classes)).astype(dtype)
    for row in range(8):
        x[row, rng.integers(0, classes, size=3)] = (NEG_INF, np.inf, np.nan)[row % 3]
    x[8] = NEG_INF  # argmax 0
    x[9, :-1] = NEG_INF  # the max is the last class
    x[10] = 0.0
    x[10, classes - 1 - (classes % 32)] = 1.0  # the max in the last lane before the tail
    target = make_target(rng, (40,), classes, 2)
    got = fx.score(x, target)
    assert_score(got, x, target)
    np.testing.assert_array_equal(got.argmax, np.argmax(x, axis=-1))
    spans = fx.score_spans(x, target[:, 0], np.arange(40), np.ones(40, dtype=np.int64))
    np.testing.assert_array_equal(spans.is_greedy, target[:, 0] == np.argmax(x, axis=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16"])
def test_argmax_and_rank_at_every_row_end(rng, dtype):
    """The scoring pass merges its lanes by halves and takes a row's last values as one more group,
    reading some of them again: for every class count up to 200 (whole rows from 33 or 65 classes
    on, tiles below), the max placed twice near the row's end, inside and before the values read
    again, ties everywhere, and targets among them, against NumPy. bfloat16 rows are converted by
    that same pass. The sum of exponentials takes a row's last values as one more group too, as
    logsumexp's does, and gives its bits."""
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    for classes in range(1, 201):
        x = rng.integers(0, 3, size=(8, classes)).astype(np.float64)  # many ties of small values
        x[1, -1] = 5.0  # the max last
        x[2, [max(classes - 20, 0), classes - 2]] = 5.0  # twice: the first one wins
        x[3, [classes - 1, max(classes - 3, 0)]] = 5.0
        x[4] = NEG_INF
        x[4, classes // 2] = 1.0
        x[5] = 1.0  # every class ties: argmax 0, every rank 0
        x[6, classes - 1 - (classes - 1) % 7] = np.nan
        target = make_target(rng, (8,), classes, 3)
        target[:, 0] = np.arange(8) % classes  # the first candidate's rank comes from the same pass
        target[1:4, 1] = classes - 1
        x = x.astype(dtype)
        reference = x.astype(np.float64)
        got = fx.score(x, target)
        np.testing.assert_array_equal(got.argmax, np.argmax(reference, axis=-1), err_msg=f"{classes} classes")
        expected = reference_score(reference, target)
        for field in EXACT_FIELDS:
            np.testing.assert_array_equal(getattr(got, field), expected[field], err_msg=f"{field}, {classes} classes")
        np.testing.assert_allclose(got.lse.astype(np.float64), expected["lse"], equal_nan=True, **tolerance(np.float32))
        if classes > 64 and x.dtype in (np.float32, np.float64):
            # Whole rows on every instruction set: the sum of exponentials is logsumexp's, term for
            # term in the same order, the row's last values included.
            np.testing.assert_array_equal(got.lse, fx.logsumexp(x), err_msg=f"{classes} classes")


def test_rank_is_top_k_membership(rng):
    x = make_logits(rng, (50, 200), np.float32)
    target = make_target(rng, (50,), 200, 3)
    got = fx.score(x, target)
    order = np.argsort(-x, axis=-1, kind="stable")
    for k in (1, 5, 20):
        top = order[:, :k]
        member = np.array([[t in top[i] for t in target[i]] for i in range(50)])
        np.testing.assert_array_equal(got.rank < k, member)


def test_empty_rows(rng):
    x = np.zeros((0, 5), dtype=np.float32)
    got = fx.score(x, np.zeros((0,), dtype=np.int64))
    for field in got._fields:
        assert getattr(got, field).shape == (0,)
    got = fx.score(np.zeros((0, 0)), np.zeros((0, 2), dtype=np.int64))
    assert got.logprob.shape == (0, 2) and got.lse.shape == (0,)
    # Empty Python lists (float64 to NumPy) are empty index arrays.
    assert fx.score(x, []).logprob.shape == (0,)
    spans = fx.score_spans(make_logits(rng, (3, 5), np.float32), [0, 1, 2], [], [])
    assert spans.logprob.shape == (0,) and spans.length.dtype == np.int64
    with pytest.raises(TypeError):
        fx.score_spans(make_logits(rng, (3, 5), np.float32), [0, 1, 2], [0.0], [1.0])


@pytest.mark.slow
def test_results_do_not_depend_on_threads(rng, restore_num_threads):
    x = make_logits(rng, (64, 3000), np.float32)
    target = make_target(rng, (64,), 3000, 2)
    starts, lengths = np.array([0, 10, 5, 40]), np.array([64, 3, 30, 0])
    tiles = make_logits(rng, (8, 30, 200), np.float64)
    tile_target = make_target(rng, (8, 200), 30)
    results = []
    for threads in (1, 2, 3):
        fx.set_num_threads(threads)
        results.append(
            (fx.score(x, target), fx.score_spans(x, target[:, 0], starts, lengths), fx.score(tiles, tile_target, axis=1))
        )
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for field in a._fields:
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ---------------------------------------------------------------------------------------------------
# score_spans

SPAN_LAYOUTS = [
    pytest.param([], [], id="no-spans"),
    pytest.param([0], [0], id="empty"),
    pytest.param([7], [0], id="empty-at-the-end"),
    pytest.param([3], [1], id="single-row"),
    pytest.param([0, 2, 5], [2, 3, 2], id="adjacent"),
    pytest.param([0, 1, 1, 4], [4, 2, 5, 3], id="overlapping"),
    pytest.param([0], [7], id="all-rows"),
    pytest.param([6, 0, 3, 3], [1, 1, 0, 4], id="unordered"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("starts, lengths", SPAN_LAYOUTS)
@pytest.mark.parametrize(
    "shape, axis", [((7, 37), -1), ((7, 5), -1), ((7, 2000), -1), ((7, 37, 1), 1)], ids=["N,C", "small", "long", "C,1"]
)
def test_spans_match_reference(rng, shape, axis, starts, lengths, dtype):
    x = make_logits(rng, shape, dtype)
    target = make_target(rng, row_shape_of(shape, axis), shape[axis])
    got = fx.score_spans(x, target, np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64), axis=axis)
    check_spans(got, x, target, starts, lengths, axis, dtype)


def check_spans(got, x, target, starts, lengths, axis, dtype):
    logprob, greedy, length = reference_spans(x, target, starts, lengths, axis)
    assert isinstance(got, fx.SpanScore)
    assert got._fields == ("logprob", "is_greedy", "length")
    assert got.logprob.dtype == np.float64 and got.is_greedy.dtype == np.bool_ and got.length.dtype == np.int64
    assert got.logprob.shape == got.is_greedy.shape == got.length.shape == (len(starts),)
    terms = max([1] + list(lengths))
    np.testing.assert_allclose(got.logprob, logprob, **tolerance(dtype, terms))
    np.testing.assert_array_equal(got.is_greedy, greedy)
    np.testing.assert_array_equal(got.length, length)
    empty = np.asarray(lengths) == 0
    assert np.all(got.logprob[empty] == 0) and np.all(got.is_greedy[empty])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, axis", [((3, 6, 50), -1), ((3, 50, 6), 1), ((2, 3, 4, 50), 3), ((2, 50, 3, 4), 1)])
def test_spans_over_rows_in_c_order(rng, shape, axis, dtype):
    """Rows are the logits' positions without the class axis, flattened in C order, whatever the axis."""
    x = make_logits(rng, shape, dtype)
    row_shape = row_shape_of(shape, axis)
    rows = int(np.prod(row_shape))
    target = make_target(rng, row_shape, shape[axis])
    starts = np.array([0, 1, rows // 2, rows - 3, 4])
    lengths = np.array([rows, 5, rows - rows // 2, 3, 0])
    check_spans(fx.score_spans(x, target, starts, lengths, axis=axis), x, target, starts, lengths, axis, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, axis", [((10, 40), -1), ((10, 4), -1), ((2, 40, 5), 1)], ids=["rows", "small", "strided"])
def test_rows_outside_spans_are_never_read(rng, shape, axis, dtype):
    """NaN logits and garbage targets outside every span change nothing."""
    x = make_logits(rng, shape, dtype)
    row_shape = row_shape_of(shape, axis)
    target = make_target(rng, row_shape, shape[axis])
    starts, lengths = np.array([1, 4, 4, 9]), np.array([2, 3, 0, 1])
    covered = np.zeros(10, dtype=bool)
    for s, n in zip(starts, lengths):
        covered[s : s + n] = True
    clean = fx.score_spans(x, target, starts, lengths, axis=axis)
    poisoned_x = np.moveaxis(x.copy(), axis, -1)
    poisoned_x.reshape(10, -1)[~covered] = np.nan
    poisoned_x = np.moveaxis(poisoned_x, -1, axis)
    poisoned_target = target.copy()
    poisoned_target.reshape(-1)[~covered] = -100
    got = fx.score_spans(poisoned_x, poisoned_target, starts, lengths, axis=axis)
    assert np.all(np.isfinite(got.logprob))
    for field in got._fields:
        np.testing.assert_array_equal(getattr(got, field), getattr(clean, field))
    # uint64 targets beyond int64 outside the spans too; inside one, they are out of bounds.
    huge_target = target.astype(np.uint64)
    huge_target.reshape(-1)[~covered] = np.iinfo(np.uint64).max
    got = fx.score_spans(poisoned_x, huge_target, starts, lengths, axis=axis)
    for field in got._fields:
        np.testing.assert_array_equal(getattr(got, field), getattr(clean, field))
    huge_target.reshape(-1)[4] = 2**63
    with pytest.raises(IndexError, match=str(2**63)):
        fx.score_spans(poisoned_x, huge_target, starts, lengths, axis=axis)
    check_spans(got, x, target, starts, lengths, axis, dtype)


def test_greedy_spans(rng):
    """A span is greedy when every target is its row's argmax (the first index of the max)."""
    x = make_logits(rng, (4, 9, 30), np.float32)
    target = np.argmax(x, axis=-1)
    target[1, 3] = (target[1, 3] + 1) % 30
    starts = np.array([0, 9, 13, 9, 18])
    lengths = np.array([9, 3, 5, 9, 18])  # batch 0, batch 1 before / after the miss, batch 1, 2 and 3
    got = fx.score_spans(x, target, starts, lengths)
    np.testing.assert_array_equal(got.is_greedy, [True, True, True, False, True])
    check_spans(got, x, target, starts, lengths, -1, np.float32)


def test_span_sums_are_float64_for_float32_logits(rng):
    """Long spans are summed in double: the float32 logits' per-row results are not rounded first."""
    x = make_logits(rng, (4000, 40), np.float32)
    target = make_target(rng, (4000,), 40)
    got = fx.score_spans(x, target, [0], [4000])
    expected = np.sum(reference_score(x, target)["logprob"])
    assert abs(got.logprob[0] - expected) <= 1e-6 * abs(expected)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32, np.uint8, np.uint64])
def test_span_index_dtypes(rng, index_dtype):
    x = make_logits(rng, (6, 10))
    target = make_target(rng, (6,), 10)
    starts, lengths = np.array([0, 2], dtype=index_dtype), np.array([3, 4], dtype=index_dtype)
    check_spans(fx.score_spans(x, target, starts, lengths), x, target, [0, 2], [3, 4], -1, np.float64)
    check_spans(fx.score_spans(x, target, [0, 2], [3, 4]), x, target, [0, 2], [3, 4], -1, np.float64)


# ---------------------------------------------------------------------------------------------------
# Errors: raised before anything is computed.


@pytest.mark.parametrize("bad", [-1, 5, 1000])
def test_target_out_of_bounds(rng, bad):
    x = make_logits(rng, (3, 5))
    with pytest.raises(IndexError, match=rf"target {bad} is out of bounds for 5 classes"):
        fx.score(x, [0, bad, 1])
    with pytest.raises(IndexError, match=rf"target {bad} is out of bounds for 5 classes"):
        fx.score(x, [[0, 1], [2, bad], [1, 1]])
    with pytest.raises(IndexError, match=rf"target {bad} is out of bounds for 5 classes"):
        fx.score_spans(x, [0, bad, 1], [0], [3])
    with pytest.raises(IndexError):
        fx.score(x, np.array([0, np.iinfo(np.uint64).max, 1], dtype=np.uint64))


def test_target_shape_mismatch(rng):
    x = make_logits(rng, (3, 4, 5))
    for target in (np.zeros((3,), np.int64), np.zeros((4, 3), np.int64), np.zeros((3, 4, 2, 2), np.int64)):
        with pytest.raises(ValueError, match=r"\(3, 4, 5\)") as error:
            fx.score(x, target)
        assert str(target.shape) in str(error.value)
        with pytest.raises(ValueError, match=r"\(3, 4, 5\)"):
            fx.score_spans(x, target, [0], [1])
    with pytest.raises(ValueError, match=r"\(3, 4, 2\)"):
        fx.score_spans(x, np.zeros((3, 4, 2), np.int64), [0], [1])


@pytest.mark.parametrize("target", [np.zeros(3), np.zeros(3, dtype=bool), np.array(["a", "b", "c"]), [0.0, 1.0, 2.0]])
def test_non_integer_target(rng, target):
    x = make_logits(rng, (3, 5))
    with pytest.raises(TypeError, match="target"):
        fx.score(x, target)
    with pytest.raises(TypeError, match="target"):
        fx.score_spans(x, target, [0], [1])


@pytest.mark.parametrize(
    "starts, lengths", [([-1], [1]), ([0], [-1]), ([5], [1]), ([6], [0]), ([2, 0], [4, 1]), ([np.iinfo(np.int64).max], [2])]
)
def test_span_out_of_bounds(rng, starts, lengths):
    x = make_logits(rng, (5, 4))
    with pytest.raises(IndexError, match="out of bounds for 5 rows"):
        fx.score_spans(x, np.zeros(5, np.int64), np.array(starts), np.array(lengths))


def test_span_arrays(rng):
    x = make_logits(rng, (5, 4))
    target = np.zeros(5, np.int64)
    with pytest.raises(ValueError, match=r"\(2,\) and \(1,\)"):
        fx.score_spans(x, target, [0, 1], [1])
    with pytest.raises(ValueError, match="1-D"):
        fx.score_spans(x, target, [[0]], [[1]])
    with pytest.raises(TypeError, match="starts"):
        fx.score_spans(x, target, [0.0], [1])
    with pytest.raises(TypeError, match="lengths"):
        fx.score_spans(x, target, [0], [1.5])
    with pytest.raises(IndexError):
        fx.score_spans(x, target, np.array([2**63], dtype=np.uint64), np.array([0], dtype=np.uint64))


def test_logits_errors(rng):
    with pytest.raises(ValueError, match="0-d"):
        fx.score(np.float64(1.0), 0)
    with pytest.raises(TypeError):
        fx.score(np.zeros((2, 3), dtype=np.int64), [0, 1])
    with pytest.raises(TypeError):
        fx.score(np.zeros((2, 3), dtype=np.complex128), [0, 1])
    with pytest.raises(ValueError, match="axis"):
        fx.score(np.zeros((2, 3)), [0, 1], axis=2)
    with pytest.raises(ValueError, match="axis"):
        fx.score_spans(np.zeros((2, 3)), [0, 1], [0], [1], axis=None)
    with pytest.raises(ValueError, match="at least one class"):
        fx.score(np.zeros((2, 0)), np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError, match="at least one class"):
        fx.score_spans(np.zeros((2, 0)), np.zeros(2, np.int64), [0], [1])


def test_inputs_are_not_modified(rng):
    x = make_logits(rng, (6, 20), np.float32)
    target = make_target(rng, (6,), 20)
    x_before, target_before = x.copy(), target.copy()
    x.flags.writeable = False
    fx.score(x, target)
    fx.score_spans(x, target, [0, 2], [3, 4])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(target, target_before)


# ---------------------------------------------------------------------------------------------------
# Against torch: log_softmax + gather, logsumexp, argmax, rank by comparison, Categorical entropy.


def torch_score(x, target, axis):
    import torch

    logits = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, axis, -1)))
    index = torch.from_numpy(np.asarray(target, dtype=np.int64))
    candidates = index.dim() == logits.dim()
    if not candidates:
        index = index.unsqueeze(-1)
    log_softmax = torch.log_softmax(logits, dim=-1)
    target_logit = logits.gather(-1, index)
    argmax = torch.argmax(logits, dim=-1)
    fields = dict(
        logprob=log_softmax.gather(-1, index),
        lse=torch.logsumexp(logits, dim=-1),
        argmax=argmax,
        is_greedy=index == argmax.unsqueeze(-1),
        rank=(logits.unsqueeze(-2) > target_logit.unsqueeze(-1)).sum(-1),
        entropy=torch.distributions.Categorical(logits=logits, validate_args=False).entropy(),
    )
    if not candidates:
        for field in ("logprob", "is_greedy", "rank"):
            fields[field] = fields[field].squeeze(-1)
    return {field: value.numpy() for field, value in fields.items()}


TORCH_TOLERANCE = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5), np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("candidates", [None, 3])
@pytest.mark.parametrize(
    "shape, axis", [((16, 100), -1), ((2, 8, 1000), -1), ((4, 37, 5), 1), ((64, 7), -1)], ids=["N,C", "B,T,V", "N,C,d", "small"]
)
def test_score_matches_torch(rng, shape, axis, candidates, dtype):
    pytest.importorskip("torch")
    x = make_logits(rng, shape, dtype)
    flat = np.moveaxis(x, axis, -1)
    flat[..., 1] = flat[..., 3] = flat.max() + 1.0  # ties at the max in every row
    flat[..., ::5] = NEG_INF  # masks
    x = np.ascontiguousarray(np.moveaxis(flat, -1, axis))
    target = make_target(rng, row_shape_of(shape, axis), shape[axis], candidates)
    target.reshape(-1)[:4] = [1, 3, 0, 5][: target.size]
    got = fx.score(x, target, axis=axis)
    expected = torch_score(x, target, axis)
    for field in FLOAT_FIELDS:
        np.testing.assert_allclose(getattr(got, field), expected[field], err_msg=field, **TORCH_TOLERANCE[np.dtype(dtype)])
    for field in EXACT_FIELDS:
        np.testing.assert_array_equal(getattr(got, field), expected[field], err_msg=field)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_score_spans_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    x = make_logits(rng, (3, 20, 300), dtype)
    target = make_target(rng, (3, 20), 300)
    target[1, 4:9] = np.argmax(x[1, 4:9], axis=-1)
    starts = np.array([0, 24, 20, 45, 59, 10])
    lengths = np.array([20, 5, 15, 0, 1, 40])
    got = fx.score_spans(x, target, starts, lengths)
    logprob = torch.log_softmax(torch.from_numpy(x), dim=-1).gather(-1, torch.from_numpy(target).unsqueeze(-1))
    greedy = torch.from_numpy(target) == torch.argmax(torch.from_numpy(x), dim=-1)
    logprob, greedy = logprob.reshape(-1).double(), greedy.reshape(-1)
    expected = [float(logprob[s : s + n].sum()) for s, n in zip(starts, lengths)]
    expected_greedy = [bool(greedy[s : s + n].all()) for s, n in zip(starts, lengths)]
    np.testing.assert_allclose(got.logprob, expected, **tolerance(dtype, 40))
    np.testing.assert_array_equal(got.is_greedy, expected_greedy)
    assert got.is_greedy[1]


def test_non_native_byte_order(rng):
    native = make_logits(rng, (7, 11), np.float32)
    target = make_target(rng, (7,), 11)
    swapped, swapped_target = native.astype(">f4"), target.astype(">i8")
    for a, b in zip(fx.score(swapped, swapped_target), fx.score(native, target)):
        np.testing.assert_array_equal(a, b)
    starts, lengths = np.array([0, 3], dtype=">i8"), np.array([4, 4], dtype=">i4")
    for a, b in zip(fx.score_spans(swapped, swapped_target, starts, lengths), fx.score_spans(native, target, [0, 3], [4, 4])):
        np.testing.assert_array_equal(a, b)
