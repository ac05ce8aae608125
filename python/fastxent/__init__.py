"""fastxent: fast, exact softmax cross-entropy on the CPU, with PyTorch's semantics.

The kernels live in the compiled module ``fastxent._core``; this package is a thin layer that
normalises arguments and calls it once per function.
"""

# (no `from __future__ import annotations` or typing names here: they would show as attributes of
# the package)
from . import _arguments, _core
from ._functional import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from ._loss import CrossEntropyLoss
from ._score import Score, SpanScore, score, score_spans

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "Score",
    "SpanScore",
    "cpu_info",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "get_num_threads",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "release_memory",
    "score",
    "score_spans",
    "set_num_threads",
    "softmax",
]


def set_num_threads(n: int) -> None:
    """Sets the number of threads the kernels use, in calls from every Python thread: at least 1, and
    at most 1024 or the number of hardware threads, whichever is larger (``ValueError`` otherwise).
    Results do not depend on it. ``n`` must be an integer (``TypeError`` otherwise)."""
    _core.set_num_threads(_arguments.integer(n, "the number of threads"))


def get_num_threads() -> int:
    """The number of threads the kernels use in calls from this thread (initially OpenMP's default:
    OMP_NUM_THREADS or the cores; lower inside a threadpoolctl limit entered in this thread)."""
    return _core.get_num_threads()


def cpu_info() -> "dict[str, object]":
    """What this build runs on: ``isa`` (the instruction set in use: ``baseline``, ``avx2`` or
    ``avx512``; ``FASTXENT_ISA`` forces one), ``supported_isas``, ``num_threads`` and ``openmp``."""
    return dict(_core.cpu_info())


def release_memory() -> int:
    """Frees the memory fastxent keeps for its next large result, and returns its size in bytes.

    The memory of a result of 32 MiB or more (a gradient, ``log_softmax``, ``softmax``) is kept when
    the last array using it is freed (one block, the most recent), so that the next call of about the
    same size writes into memory that is already mapped instead of fresh pages, which the operating
    system zeroes first. On Linux the system may also take the kept pages back by itself when memory
    runs short.
    """
    return _core.release_memory()
