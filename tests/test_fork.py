"""Fork: after the parent has run the kernels on two threads (so libgomp's thread pool exists), a
child made by fork computes the same results and does not hang. A hang fails the test after a
timeout instead of blocking the run."""

from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import pytest

import fastxent as fx

JOIN_TIMEOUT = 60

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="fork is POSIX only"),
    # Python 3.12+ warns when a process with threads forks; that is the situation under test.
    pytest.mark.filterwarnings("ignore:.*fork\\(\\) may lead to deadlocks:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*use of fork\\(\\):DeprecationWarning"),
]


def inputs():
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((2048, 64)).astype(np.float32)  # 131072 elements: above the threading threshold
    target = rng.integers(0, 64, 2048)
    strided = rng.standard_normal((8, 40, 300))  # class axis not last: the tile kernels
    strided_target = rng.integers(0, 40, (8, 300))
    return x, target, strided, strided_target


def compute():
    x, target, strided, strided_target = inputs()
    loss, grad = fx.cross_entropy_with_grad(x, target, label_smoothing=0.1)
    strided_loss, strided_grad = fx.cross_entropy_with_grad(strided, strided_target, reduction="none")
    return [
        np.asarray(loss),
        grad,
        fx.log_softmax(x),
        fx.softmax(strided, axis=1),
        fx.logsumexp(x),
        strided_loss,
        strided_grad,
    ]


def child(connection, expected):
    try:
        got = compute()
        same = len(got) == len(expected) and all(a.tobytes() == b.tobytes() for a, b in zip(got, expected))
        # The child can still change the thread count and compute again.
        fx.set_num_threads(2)
        again = compute()
        same_again = all(a.tobytes() == b.tobytes() for a, b in zip(again, expected))
        connection.send(("ok", same, same_again))
    except BaseException as error:  # pragma: no cover - reported to the parent
        connection.send(("error", repr(error), None))
    finally:
        connection.close()


def warm_up_the_pool():
    fx.set_num_threads(2)
    assert fx.get_num_threads() == 2
    expected = compute()  # big enough to start the OpenMP team in the parent
    return expected


def run_in_child(context_name: str, expected):
    context = multiprocessing.get_context(context_name)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=child, args=(send, expected))
    process.start()
    send.close()
    process.join(JOIN_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(10)
        pytest.fail(f"the forked child hung (no exit within {JOIN_TIMEOUT} s)")
    assert process.exitcode == 0, f"the child exited with {process.exitcode}"
    assert receive.poll(5), "the child sent nothing"
    return receive.recv()


def test_forked_child_computes_correctly_and_does_not_hang(restore_num_threads):
    if fx.cpu_info()["openmp"] is False:
        pytest.skip("built without OpenMP: there is no thread pool to inherit")
    expected = warm_up_the_pool()
    status, same, same_again = run_in_child("fork", expected)
    assert status == "ok", same
    assert same, "the child's results differ from the parent's"
    assert same_again, "the child's results differ after set_num_threads(2)"
    # The parent still works, with its pool.
    assert all(a.tobytes() == b.tobytes() for a, b in zip(compute(), expected))


def test_forked_child_of_a_child(restore_num_threads):
    """Two generations of fork, each after the kernels ran."""
    expected = warm_up_the_pool()

    def grandparent(connection):
        try:
            compute()
            status = run_in_child("fork", expected)
            connection.send(status)
        except BaseException as error:  # pragma: no cover
            connection.send(("error", repr(error), None))
        finally:
            connection.close()

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=grandparent, args=(send,))
    process.start()
    send.close()
    process.join(2 * JOIN_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(10)
        pytest.fail("a forked process hung")
    assert process.exitcode == 0
    status, same, same_again = receive.recv()
    assert status == "ok", same
    assert same and same_again


def test_os_fork_directly(restore_num_threads):
    """A bare os.fork (no multiprocessing machinery), with the child's exit status as the verdict."""
    expected = warm_up_the_pool()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            got = compute()
            code = 0 if all(a.tobytes() == b.tobytes() for a, b in zip(got, expected)) else 2
        finally:
            os._exit(code)
    import time

    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the os.fork child hung")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
