"""Large results (32 MiB or more) reuse the memory of the last one freed: values stay right, live
results never share memory, views keep theirs, and release_memory() hands the kept block back."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import assert_close

ROWS, CLASSES = 1 << 20, 10  # 40 MiB of float32
KEPT = fx._core.KEPT_RESULT_BYTES


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    target = rng.integers(0, CLASSES, ROWS)
    return x, target


@pytest.fixture(autouse=True)
def nothing_kept():
    fx.release_memory()
    yield
    fx.release_memory()


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


# Every way to a large result: the common-call fast paths and the general ones (a transposed view,
# int32 targets, label smoothing, class weights), and the loss class.
LARGE_RESULTS = {
    "log_softmax": lambda x, t: fx.log_softmax(x),
    "softmax": lambda x, t: fx.softmax(x),
    "log_softmax-general": lambda x, t: fx.log_softmax(x.T, axis=0),
    "softmax-general": lambda x, t: fx.softmax(x.T, axis=0),
    "cross_entropy_grad": lambda x, t: fx.cross_entropy_grad(x, t),
    "cross_entropy_with_grad": lambda x, t: fx.cross_entropy_with_grad(x, t)[1],
    "cross_entropy_grad-general": lambda x, t: fx.cross_entropy_grad(x, t.astype(np.int32), label_smoothing=0.1),
    "cross_entropy_with_grad-general": lambda x, t: fx.cross_entropy_with_grad(x, t, weight=np.ones(CLASSES))[1],
    "CrossEntropyLoss": lambda x, t: _criterion_grad(x, t),
}


def _criterion_grad(x, t):
    criterion = fx.CrossEntropyLoss()
    criterion(x, t)
    return criterion.backward()


@pytest.mark.parametrize("name", LARGE_RESULTS)
def test_a_freed_result_is_reused_with_the_right_values(big, name):
    x, target = big
    call = LARGE_RESULTS[name]
    first = call(x, target)
    assert first.nbytes >= KEPT and first.flags.c_contiguous and first.flags.writeable
    expected = first.copy()
    where = address(first)
    first[:] = np.nan  # what the kept block holds must not leak into the next result
    del first
    again = call(x, target)
    assert address(again) == where, "the kept block was not reused"
    np.testing.assert_array_equal(again, expected)


def test_values_against_the_reference(big):
    x, target = big
    rows = slice(0, 4096)
    for _ in range(2):  # fresh memory, then the kept block
        grad = fx.cross_entropy_grad(x, target)
        assert_close(grad[rows], ref.cross_entropy_grad(x[rows].astype(np.float64), target[rows]) / (ROWS / 4096),
                     np.float32)
        del grad


def test_live_results_never_share_memory(big):
    x, target = big
    results = [fx.log_softmax(x) for _ in range(3)]
    for i in range(3):
        for j in range(i):
            assert not np.shares_memory(results[i], results[j])
        np.testing.assert_array_equal(results[i], results[0])


def test_a_view_keeps_its_memory(big):
    x, target = big
    grad = fx.cross_entropy_grad(x, target)
    view = grad[ROWS // 2 :]
    saved = view.copy()
    del grad
    other = fx.cross_entropy_grad(-x, target)
    assert not np.shares_memory(other, view)
    np.testing.assert_array_equal(view, saved)
    del view
    del saved
    again = fx.cross_entropy_grad(-x, target)
    np.testing.assert_array_equal(again, other)


def test_release_memory_returns_the_kept_bytes(big):
    x, _ = big
    result = fx.softmax(x)
    nbytes = result.nbytes
    assert fx.release_memory() == 0
    del result
    assert fx.release_memory() == nbytes
    assert fx.release_memory() == 0


def test_small_results_are_numpys_own(big):
    x, target = big
    small = fx.cross_entropy_grad(x[:1000], target[:1000])
    assert small.flags.owndata
    del small
    assert fx.release_memory() == 0


def test_a_much_larger_block_is_not_taken_for_a_smaller_result(big):
    x, target = big
    doubled = np.concatenate([x, x, x])
    large = fx.log_softmax(doubled)
    where = address(large)
    del large
    smaller = fx.log_softmax(x)
    assert address(smaller) != where
    del smaller


def test_16_bit_and_float64_results(big):
    x, target = big
    for dtype in (np.float16, np.float64):
        logits = x[: ROWS // 2 if dtype == np.float16 else ROWS].astype(dtype)
        logits = np.concatenate([logits] * (4 if dtype == np.float16 else 1))
        first = fx.cross_entropy_with_grad(logits, np.resize(target, len(logits)))[1]
        assert first.dtype == dtype and first.nbytes >= KEPT
        expected, where = first.copy(), address(first)
        del first
        again = fx.cross_entropy_with_grad(logits, np.resize(target, len(logits)))[1]
        assert address(again) == where
        np.testing.assert_array_equal(again, expected)
        del again
        fx.release_memory()


def test_threads_each_get_their_own_result(big):
    x, target = big
    expected = fx.cross_entropy_grad(x, target)
    failures = []

    def work():
        for _ in range(3):
            grad = fx.cross_entropy_grad(x, target)
            if not np.array_equal(grad, expected):
                failures.append("wrong values")
            del grad

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_results_from_16_mib_are_on_a_line_and_freed_not_kept():
    """Results of OWN_RESULT_BYTES (16 MiB) up to KEPT_RESULT_BYTES come from the library too, on a
    64-byte line (for the kernels' streaming stores), and are freed with their last array."""
    own = fx._core.OWN_RESULT_BYTES
    assert own == 16 << 20 and own < KEPT
    rows = own // (4 * CLASSES) + 1  # just over 16 MiB of float32
    rng = np.random.default_rng(6)
    x = rng.standard_normal((rows, CLASSES)).astype(np.float32)
    target = rng.integers(0, CLASSES, rows)
    grad = fx.cross_entropy_grad(x, target)
    assert address(grad) % 64 == 0 and grad.base is not None
    assert_close(grad, ref.cross_entropy_grad(x.astype(np.float64), target), np.float32)
    del grad
    assert fx.release_memory() == 0  # nothing was kept
    small = fx.log_softmax(x[: rows // 2])
    assert small.base is None  # NumPy's own below 16 MiB
