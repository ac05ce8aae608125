"""Arrays of more than 2**31 elements (8.6 GB of float32 each): every index and offset must be
64-bit. Only functions without an N x C output are called, so the peak stays near 9 GiB; each test
skips (does not fail) when /proc/meminfo's MemAvailable is too small.

The logits repeat a random block of BLOCK_ROWS rows (a prime, so that an offset wrapped modulo 2**31
or 2**32 lands on different data) and end in a distinct row; the float64 reference is computed per
block and for the last rows separately.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx

pytestmark = pytest.mark.slow

GIB = 2**30
BLOCK_ROWS = 4093


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def need_memory(nbytes: int) -> None:
    headroom = 2 * GIB
    available = available_memory()
    if available < nbytes + headroom:
        pytest.skip(f"needs {(nbytes + headroom) / GIB:.1f} GiB of available memory, {available / GIB:.1f} GiB available")


def logsumexp64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def test_more_than_two_to_the_31_elements_in_rows():
    rows, classes = 2**22 + 1, 512  # 2**31 + 512 elements
    assert rows * classes > 2**31
    need_memory(rows * classes * 4)
    rng = np.random.default_rng(31)
    block = (4.0 * rng.standard_normal((BLOCK_ROWS, classes))).astype(np.float32)
    x = np.empty((rows, classes), dtype=np.float32)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        x[start:stop] = block[: stop - start]
    last = np.linspace(-3.0, 3.0, classes, dtype=np.float32)  # the row past 2**31 elements
    x[-1] = last
    target = rng.integers(0, classes, rows)
    target[-1] = classes - 1
    target[-2] = -100

    # The float64 reference: per-row logsumexp of the block, the distinct last row, gathered logits.
    block_lse = logsumexp64(block)
    lse = np.resize(block_lse, rows)
    lse[-1] = logsumexp64(last[None, :])[0]
    kept = target != -100
    picked = np.zeros(rows)
    picked[kept] = x[np.flatnonzero(kept), target[kept]]
    row_loss = np.where(kept, lse - picked, 0.0)
    expected_mean = row_loss.sum() / kept.sum()

    loss = fx.cross_entropy(x, target)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(float(loss), expected_mean, rtol=1e-6)

    losses = fx.cross_entropy(x, target, reduction="none")
    assert losses.shape == (rows,)
    np.testing.assert_allclose(losses[-3:], row_loss[-3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses, row_loss, rtol=1e-6, atol=1e-5)
    del losses

    got_lse = fx.logsumexp(x, axis=-1)
    np.testing.assert_allclose(got_lse, lse, rtol=1e-6, atol=1e-6)
    del got_lse

    # x as log-probabilities: nll_loss gathers one element a row, the last one past 2**31.
    nll = fx.nll_loss(x, target, reduction="sum")
    np.testing.assert_allclose(float(nll), -picked[kept].sum(), rtol=1e-6)


def test_more_than_two_to_the_31_classes_in_one_row():
    classes = 2**31 + 5  # the class count itself does not fit in 32 bits
    need_memory(classes * 4)
    x = np.zeros((1, classes), dtype=np.float32)
    x[0, 0] = -3.0
    x[0, 2**31 - 1] = 2.0
    x[0, -1] = 5.0  # the max, and the target, past 2**31
    expected_lse = np.log((classes - 3) + np.exp(-3.0) + np.exp(2.0) + np.exp(5.0))
    for t, value in [(classes - 1, 5.0), (2**31 - 1, 2.0), (2**31, 0.0), (0, -3.0)]:
        loss = fx.cross_entropy(x, np.array([t]))
        np.testing.assert_allclose(float(loss), expected_lse - value, rtol=1e-6)
    np.testing.assert_allclose(fx.logsumexp(x, axis=-1), [expected_lse], rtol=1e-6)
    with pytest.raises(IndexError):
        fx.cross_entropy(x, np.array([classes]))
