"""Threads: many Python threads calling every function at once get bitwise the single-threaded
results (the kernels release the GIL and share no mutable state), whatever the kernels' own thread
count; and threadpoolctl's threadpool_limits limits fastxent's OpenMP pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastxent as fx

PYTHON_THREADS = 8
ROUNDS = 3


def problems():
    """Inputs for every function: one big enough for the kernels to use their own threads
    (> 2**15 elements) along a contiguous class axis, one along a strided class axis, one small."""
    rng = np.random.default_rng(11)
    cases = []
    for shape, axis, dtype in [
        ((512, 100), None, np.float32),
        ((16, 37, 130), None, np.float64),
        ((7, 5), None, np.float32),
    ]:
        x = (3.0 * rng.standard_normal(shape)).astype(dtype)
        a = 1 if axis is None else axis
        classes = shape[a]
        row_shape = shape[:a] + shape[a + 1 :]
        target = rng.integers(0, classes, row_shape)
        target[..., 0] = -100
        y = rng.dirichlet(np.ones(classes), size=row_shape)
        y = np.moveaxis(y, -1, a).astype(dtype)
        weight = rng.uniform(0.5, 2.0, classes).astype(dtype)
        cases.append(dict(x=x, target=target, y=y, weight=weight, axis=a, row_shape=row_shape))
    return cases


def run_everything(cases):
    """Every public function on every case; a flat list of results."""
    results = []
    for c in cases:
        x, target, y, weight, axis = c["x"], c["target"], c["y"], c["weight"], c["axis"]
        results.append(fx.log_softmax(x, axis=axis))
        results.append(fx.softmax(x, axis=axis))
        results.append(fx.logsumexp(x, axis=axis))
        out = np.empty_like(x)
        results.append(fx.softmax(x, axis=axis, out=out))
        for t in (target, y):
            for reduction in ("none", "mean", "sum"):
                kwargs = dict(weight=weight, axis=axis, reduction=reduction, label_smoothing=0.1)
                results.append(np.asarray(fx.cross_entropy(x, t, **kwargs)))
                results.append(fx.cross_entropy_grad(x, t, **kwargs))
                loss, grad = fx.cross_entropy_with_grad(x, t, **kwargs)
                results += [np.asarray(loss), grad]
                criterion = fx.CrossEntropyLoss(**kwargs)
                results.append(np.asarray(criterion(x, t)))
                results.append(criterion.backward(0.5))
        for reduction in ("none", "mean", "sum"):
            log_probs = fx.log_softmax(x, axis=axis)
            results.append(np.asarray(fx.nll_loss(log_probs, target, weight, axis=axis, reduction=reduction)))
    return results


def assert_bitwise_equal(got, expected):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"result {i}"
        assert a.tobytes() == b.tobytes(), f"result {i} differs from the single-threaded run"


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_many_python_threads_get_the_single_threaded_results(restore_num_threads, kernel_threads):
    cases = problems()
    fx.set_num_threads(1)
    expected = run_everything(cases)
    fx.set_num_threads(kernel_threads)

    start = threading.Barrier(PYTHON_THREADS)
    outcomes = [None] * PYTHON_THREADS

    def worker(index):
        try:
            start.wait(timeout=60)
            for _ in range(ROUNDS):
                assert_bitwise_equal(run_everything(cases), expected)
            outcomes[index] = "ok"
        except BaseException as error:  # reported by the main thread
            outcomes[index] = error

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(PYTHON_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    for outcome in outcomes:
        if outcome != "ok":
            raise AssertionError(f"a thread failed: {outcome!r}") from (outcome if isinstance(outcome, BaseException) else None)


def test_changing_the_thread_count_while_other_threads_compute(restore_num_threads):
    """set_num_threads from one thread while others run: results never depend on the count."""
    cases = problems()[:2]
    fx.set_num_threads(1)
    expected = run_everything(cases)
    stop = threading.Event()
    failures = []

    def toggler():
        n = 1
        while not stop.is_set():
            n = 3 - n
            fx.set_num_threads(n)

    def worker():
        try:
            for _ in range(2):
                assert_bitwise_equal(run_everything(cases), expected)
        except BaseException as error:
            failures.append(error)

    toggle = threading.Thread(target=toggler)
    workers = [threading.Thread(target=worker) for _ in range(4)]
    toggle.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=300)
    stop.set()
    toggle.join(timeout=60)
    assert not any(thread.is_alive() for thread in workers + [toggle]), "a thread hung"
    assert not failures, failures[0]


# ---------------------------------------------------------------------------
# threadpoolctl
# ---------------------------------------------------------------------------


def test_threadpool_limits_limits_the_kernels(restore_num_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fx.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP: the kernels always run on the calling thread")
    fx.set_num_threads(2)
    assert fx.get_num_threads() == 2
    x = np.random.default_rng(5).standard_normal((1000, 64)).astype(np.float32)
    target = np.arange(1000) % 64
    expected = fx.cross_entropy_with_grad(x, target)
    with threadpoolctl.threadpool_limits(limits=1):
        assert fx.get_num_threads() == 1
        assert fx.cpu_info()["num_threads"] == 1
        loss, grad = fx.cross_entropy_with_grad(x, target)
    assert fx.get_num_threads() == 2
    assert loss == expected[0]
    np.testing.assert_array_equal(grad, expected[1])
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fx.get_num_threads() == 1
    assert fx.get_num_threads() == 2


def test_threadpoolctl_sees_the_openmp_runtime():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fx.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP")
    apis = {pool["user_api"] for pool in threadpoolctl.threadpool_info()}
    assert "openmp" in apis


def test_set_num_threads_is_not_undone_by_a_wider_limit(restore_num_threads):
    """threadpool_limits above fastxent's own setting does not raise it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fx.set_num_threads(1)
    with threadpoolctl.threadpool_limits(limits=4):
        assert fx.get_num_threads() == 1
    assert fx.get_num_threads() == 1


def in_a_new_thread(function):
    """function() called in a new Python thread; its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join(timeout=60)
    return result[0]


def test_a_raised_thread_count_holds_in_every_thread(restore_num_threads):
    """set_num_threads above OpenMP's default holds in threads other than the caller's too (each
    thread has its own OpenMP count, which once capped the setting)."""
    if not fx.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP")
    raised = in_a_new_thread(fx.get_num_threads) + 1
    fx.set_num_threads(raised)
    assert fx.get_num_threads() == raised
    assert in_a_new_thread(fx.get_num_threads) == raised
    fx.set_num_threads(1)
    assert in_a_new_thread(fx.get_num_threads) == 1


def test_a_limit_around_the_first_call_does_not_outlast_it():
    """The initial thread count is OpenMP's default, not the count of the thread that happened to
    make the first call: a threadpool_limits block around it once kept the process at its limit."""
    pytest.importorskip("threadpoolctl")
    if not fx.cpu_info()["openmp"]:
        pytest.skip("built without OpenMP")
    code = """
        import json, threading
        import numpy as np, threadpoolctl
        import fastxent as fx
        x = np.zeros((2048, 100), np.float32)
        seen = {}
        def first_call():
            with threadpoolctl.threadpool_limits(limits=1):
                fx.cross_entropy(x, np.zeros(2048, np.int64))
                seen["inside"] = fx.get_num_threads()
        thread = threading.Thread(target=first_call)
        thread.start()
        thread.join()
        seen["after"] = fx.get_num_threads()
        print(json.dumps(seen))
    """
    env = dict(os.environ, OMP_NUM_THREADS="3")
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {"inside": 1, "after": 3}


def test_a_shared_loss_object_never_mixes_two_calls():
    """backward() of an instance shared by threads is the gradient of one whole forward call
    (whichever came last), never one call's logits with another call's row statistics."""
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((16, 9)).astype(np.float32) for _ in range(2)]
    target = np.arange(16) % 9
    gradients = [fx.cross_entropy_grad(x, target).tobytes() for x in inputs]
    criterion = fx.CrossEntropyLoss()
    failures = []

    def worker(x):
        for _ in range(2000):
            criterion(x, target)
            if criterion.backward().tobytes() not in gradients:
                failures.append("a gradient of neither call")
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(inputs[i % 2],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures[0]
