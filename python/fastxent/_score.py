"""Scoring for language-model evaluation: ``score`` and ``score_spans``.

Normalise the arguments, call ``_core`` once, return. Every statistic of a row comes from one read
of its logits from memory (then a pass over them in cache; see the Note on one pass in score.cpp).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import numpy as np

from . import _arguments as args
from . import _core

ArrayLike = Any


class Score(NamedTuple):
    """Per-row statistics of ``score``. ``logprob``, ``is_greedy`` and ``rank`` have the target's
    shape; ``lse``, ``argmax`` and ``entropy`` the row shape (the logits without the class axis)."""

    logprob: np.ndarray  # log_softmax at the target, in the logits' dtype (float32 for 16-bit logits)
    lse: np.ndarray  # logsumexp of the row
    argmax: np.ndarray  # int64: first index of the max; the first NaN if the row has one (numpy.argmax)
    is_greedy: np.ndarray  # bool: target == argmax
    rank: np.ndarray  # int64: classes with a logit strictly greater than the target's
    entropy: np.ndarray  # entropy of the softmax, in nats


class SpanScore(NamedTuple):
    """Per-span results of ``score_spans``, each of shape ``(spans,)``."""

    logprob: np.ndarray  # float64: sum of the target log-probabilities over the span
    is_greedy: np.ndarray  # bool: every target of the span is the argmax of its row
    length: np.ndarray  # int64: the span's number of rows


def _logits_view(logits: ArrayLike, axis: Any) -> Tuple[np.ndarray, args.View, Tuple[int, ...], Tuple[int, ...]]:
    """(array, view, shape, row shape) of the logits; 16-bit logits are read as they are and
    computed in float32."""
    array, _ = args.logits(logits, "logits")
    axis = args.class_axis(array.ndim, axis, pytorch_default=False)
    shape = array.shape
    row_shape = shape[:axis] + shape[axis + 1 :]
    array, view = args.class_view(array, axis)
    return array, view, shape, row_shape


def _integer_array(value: ArrayLike, name: str) -> np.ndarray:
    array = value if type(value) is np.ndarray else np.asarray(value)
    if array.size == 0 and array.dtype.kind == "f":  # [] (NumPy makes it float64): no entries
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an array of integers, got dtype {array.dtype}")
    return array


def _int64(array: np.ndarray, name: str, classes: int) -> np.ndarray:
    """``array`` as C-contiguous int64; uint64 values beyond int64 are out of bounds."""
    if args.beyond_int64(array):
        raise IndexError(f"{name} {array.max()} is out of bounds for {classes} classes")
    return np.asarray(array, dtype=np.int64, order="C")


def score(logits: ArrayLike, target: ArrayLike, *, axis: int = -1) -> Score:
    """Per-row statistics of the softmax of ``logits`` along ``axis``, each row read from memory once.

    ``target`` holds class indices (any integer dtype), either one per row (the logits' shape
    without ``axis``) or ``K`` candidates per row (that shape plus a trailing ``K``, e.g. the
    choices of a multiple-choice question). Returns a ``Score``:

    * ``logprob``: ``log_softmax(logits)`` at each target, shape of ``target``;
    * ``lse``: ``logsumexp`` of each row;
    * ``argmax``: int64, the first index of each row's max (a NaN counts as the max at its first
      position, as ``numpy.argmax``);
    * ``is_greedy``: bool, ``target == argmax``, shape of ``target``;
    * ``rank``: int64, how many classes have a logit strictly greater than the target's, so the
      target is in the top ``k`` exactly when ``rank < k`` (ties count in its favour; a NaN target
      logit has rank 0); shape of ``target``;
    * ``entropy``: entropy of each row's softmax in nats, ``lse - sum(p * logits)``, with masked
      (``-inf``) logits contributing 0.

    Floating results have the logits' dtype (float32 for float16 and bfloat16 logits, which are read
    directly, without a float32 copy). A target outside
    ``[0, C)`` raises ``IndexError``, a target of the wrong shape ``ValueError``, a non-integer
    target ``TypeError``; nothing is computed before the arguments are validated.
    """
    array, view, shape, row_shape = _logits_view(logits, axis)
    classes = view[1]
    target_array = _integer_array(target, "target")
    if target_array.shape == row_shape:
        candidates = 1
    elif target_array.ndim == len(row_shape) + 1 and target_array.shape[:-1] == row_shape:
        candidates = target_array.shape[-1]
    else:
        raise ValueError(
            f"target shape {target_array.shape} does not match logits shape {shape}: score needs shape "
            f"{row_shape} (the logits' shape without the class axis) or {row_shape + ('K',)} for K "
            f"candidates per row"
        )
    rows = view[0] * view[2]
    if classes == 0 and rows > 0:
        raise ValueError(f"score needs at least one class, got logits of shape {shape} with an empty class axis")
    target_array = _int64(target_array, "target", classes)
    dtype = args.compute_dtype(array.dtype)
    target_shape = target_array.shape
    logprob = np.empty(target_shape, dtype)
    is_greedy = np.empty(target_shape, np.bool_)
    rank = np.empty(target_shape, np.int64)
    lse = np.empty(row_shape, dtype)
    argmax = np.empty(row_shape, np.int64)
    entropy = np.empty(row_shape, dtype)
    _core.score(
        args.core_array(array), view, target_array, candidates, logprob, is_greedy, rank, lse, argmax, entropy,
        args.half_code(array.dtype),
    )
    return Score(logprob, lse, argmax, is_greedy, rank, entropy)


def score_spans(
    logits: ArrayLike, target: ArrayLike, starts: ArrayLike, lengths: ArrayLike, *, axis: int = -1
) -> SpanScore:
    """Per-span sums of target log-probabilities, reading only the rows inside the spans.

    The rows are the positions of ``logits`` without ``axis``, flattened in C order (for
    ``(batch, seq, vocab)`` logits, row ``b * seq + t``). ``target`` has the row shape (class
    indices, any integer dtype); ``starts`` and ``lengths`` are 1-D integer arrays, one entry per
    span: span ``s`` covers rows ``starts[s] .. starts[s] + lengths[s] - 1``. Spans may be empty,
    adjacent or overlapping. Returns a ``SpanScore``:

    * ``logprob``: float64, the sum over the span of ``log_softmax(logits)`` at the target (0 for an
      empty span);
    * ``is_greedy``: bool, every target of the span is its row's argmax (True for an empty span);
    * ``length``: int64, the span's length.

    Rows outside every span are never read, neither their logits nor their targets, unless the
    logits must first be copied whole (a layout that is not read in place, see the README, or
    another byte order; ``logits[:, :-1]`` of ``(batch, seq, vocab)`` logits is read in place). A span outside
    ``[0, rows]`` or of negative length raises ``IndexError``, as does a target outside ``[0, C)``
    inside a span; shapes that do not match raise ``ValueError``, non-integer arrays ``TypeError``.
    """
    array, view, shape, row_shape = _logits_view(logits, axis)
    classes = view[1]
    target_array = _integer_array(target, "target")
    if target_array.shape != row_shape:
        raise ValueError(
            f"target shape {target_array.shape} does not match logits shape {shape}: score_spans needs "
            f"shape {row_shape} (the logits' shape without the class axis)"
        )
    start_array = _integer_array(starts, "starts")
    length_array = _integer_array(lengths, "lengths")
    if start_array.ndim != 1 or length_array.ndim != 1 or start_array.shape != length_array.shape:
        raise ValueError(
            f"starts and lengths must be 1-D arrays of the same length, got shapes {start_array.shape} "
            f"and {length_array.shape}"
        )
    rows = view[0] * view[2]
    start_array = _span_bounds(start_array, "starts", rows)
    length_array = _span_bounds(length_array, "lengths", rows)
    target_array = _span_targets(target_array, classes, start_array, length_array, rows)
    spans = start_array.shape[0]
    logprob = np.empty(spans, np.float64)
    is_greedy = np.empty(spans, np.bool_)
    _core.score_spans(
        args.core_array(array), view, target_array, start_array, length_array, logprob, is_greedy,
        args.half_code(array.dtype),
    )
    return SpanScore(logprob, is_greedy, length_array.copy())


def _span_targets(array: np.ndarray, classes: int, starts: np.ndarray, lengths: np.ndarray, rows: int) -> np.ndarray:
    """The targets as C-contiguous int64. A uint64 value beyond int64 is out of bounds in a row that
    a span covers; elsewhere it is never read, and 0 stands in for it (so are the rows of spans
    that are themselves out of bounds, which the core refuses first)."""
    if not args.beyond_int64(array):
        return np.asarray(array, dtype=np.int64, order="C")
    flat = array.reshape(-1)
    big = flat > np.iinfo(np.int64).max
    if np.all((starts >= 0) & (lengths >= 0) & (starts <= rows - lengths)):
        edges = np.zeros(rows + 1, np.int64)
        np.add.at(edges, starts, 1)
        np.add.at(edges, starts + lengths, -1)
        covered = big & (np.cumsum(edges[:-1]) > 0)
        if np.any(covered):
            raise IndexError(f"target {flat[covered][0]} is out of bounds for {classes} classes")
    return np.where(big, 0, flat).astype(np.int64).reshape(array.shape)


def _span_bounds(array: np.ndarray, name: str, rows: int) -> np.ndarray:
    """``array`` as C-contiguous int64; uint64 values beyond int64 are out of bounds."""
    if args.beyond_int64(array):
        raise IndexError(f"{name} {array.max()} is out of bounds for {rows} rows")
    return np.asarray(array, dtype=np.int64, order="C")
