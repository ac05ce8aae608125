"""The shape of the public API: names, signatures, introspection, thread control."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx

PUBLIC = [
    "log_softmax",
    "softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "nll_loss",
    "CrossEntropyLoss",
    "set_num_threads",
    "get_num_threads",
    "cpu_info",
    "release_memory",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_exists(name):
    assert callable(getattr(fx, name))


def test_the_package_shows_only_its_api():
    """Every public attribute of the package is in ``__all__`` (no typing helpers or modules), and
    ``__all__`` is the functions above plus the score results."""
    shown = {name for name in dir(fx) if not name.startswith("_")}
    assert shown == set(fx.__all__) == set(PUBLIC) | {"score", "score_spans", "Score", "SpanScore"}


def test_cpu_info():
    info = fx.cpu_info()
    assert isinstance(info, dict)
    assert isinstance(info["isa"], str) and info["isa"]
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    assert isinstance(info["openmp"], bool)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_and_get_num_threads(restore_num_threads, n):
    fx.set_num_threads(n)
    assert fx.get_num_threads() == n
    x = np.random.default_rng(0).standard_normal((1000, 10))
    np.testing.assert_allclose(fx.logsumexp(x), np.log(np.exp(x).sum(axis=1)), rtol=1e-12)


@pytest.mark.parametrize("n", [0, -1, 10**6, 2**40, 2**70, -(2**70), np.int64(2**62)])
def test_set_num_threads_out_of_range(restore_num_threads, n):
    """Too many threads is refused up front: OpenMP would end the process when it cannot make them."""
    before = fx.get_num_threads()
    with pytest.raises(ValueError, match="at least 1 and at most") as error:
        fx.set_num_threads(n)
    assert str(error.value).endswith(f", got {int(n)}")  # the value given, however large
    assert fx.get_num_threads() == before


@pytest.mark.parametrize("n", [1.5, 2.0, "2", True, None])
def test_set_num_threads_takes_only_integers(restore_num_threads, n):
    before = fx.get_num_threads()
    with pytest.raises(TypeError, match="integer"):
        fx.set_num_threads(n)
    assert fx.get_num_threads() == before


def test_set_num_threads_takes_numpy_integers(restore_num_threads):
    fx.set_num_threads(np.int64(1))
    assert fx.get_num_threads() == 1


def test_set_num_threads_up_to_1024(restore_num_threads):
    fx.set_num_threads(1024)
    assert fx.get_num_threads() == 1024
    x = np.random.default_rng(0).standard_normal((100, 10))
    np.testing.assert_allclose(fx.logsumexp(x), np.log(np.exp(x).sum(axis=1)), rtol=1e-12)


def test_get_num_threads_is_positive():
    assert isinstance(fx.get_num_threads(), int) and fx.get_num_threads() >= 1


def test_options_are_keyword_only():
    x = np.zeros((2, 3))
    t = np.array([0, 1])
    with pytest.raises(TypeError):
        fx.cross_entropy(x, t, None, 1)
    with pytest.raises(TypeError):
        fx.cross_entropy_grad(x, t, None, 1)
    with pytest.raises(TypeError):
        fx.nll_loss(x, t, None, 1)
    with pytest.raises(TypeError):
        fx.CrossEntropyLoss(None, 1)
    with pytest.raises(TypeError):
        fx.log_softmax(x, -1, np.zeros((2, 3)))


def test_axis_and_weight_may_be_positional():
    x = np.random.default_rng(0).standard_normal((2, 3))
    t = np.array([0, 2])
    w = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(fx.log_softmax(x, 0), fx.log_softmax(x, axis=0))
    np.testing.assert_array_equal(fx.softmax(x, 0), fx.softmax(x, axis=0))
    np.testing.assert_array_equal(fx.logsumexp(x, 0), fx.logsumexp(x, axis=0))
    assert fx.cross_entropy(x, t, w) == fx.cross_entropy(x, t, weight=w)
    assert fx.CrossEntropyLoss(w)(x, t) == fx.CrossEntropyLoss(weight=w)(x, t)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_result_dtypes_follow_the_input(dtype):
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype)
    t = np.array([0, 1, 2, 0])
    assert fx.log_softmax(x).dtype == dtype
    assert fx.softmax(x).dtype == dtype
    assert fx.logsumexp(x).dtype == dtype
    assert type(fx.cross_entropy(x, t)) is np.dtype(dtype).type
    assert type(fx.cross_entropy(x, t, reduction="sum")) is np.dtype(dtype).type
    assert type(fx.nll_loss(x, t)) is np.dtype(dtype).type
    assert fx.cross_entropy(x, t, reduction="none").dtype == dtype
    assert fx.cross_entropy_grad(x, t).dtype == dtype
    loss, grad = fx.cross_entropy_with_grad(x, t)
    assert type(loss) is np.dtype(dtype).type and grad.dtype == dtype
