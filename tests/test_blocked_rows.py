"""Views whose axes before the class axis collapse to two strides rather than one, such as
``logits[:, :-1]`` of ``(batch, seq, vocab)`` logits, are read in place as rows in blocks (for more
than _core.TILE_CLASSES classes along the last axis): every function gives the bits of the same
values copied to a C-contiguous array."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent as fx
from fastxent import _arguments, _core

DTYPES = ["float32", "float64", "float16", "bfloat16"]


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _views(rng, dtype):
    """(name, view) pairs: LM-style slices, reversed and stepped outer axes, few rows of a huge
    vocabulary (split rows), and enough rows for threads; all with rows in blocks."""
    def logits(shape):
        return (3 * rng.standard_normal(shape)).astype(np.float32).astype(dtype)

    return [
        ("seq[:-1]", logits((3, 9, 100))[:, :-1]),
        ("seq[1:]-wide", logits((2, 6, 1000))[:, 1:]),
        ("reversed-seq", logits((3, 5, 70))[:, ::-1]),
        ("stepped-batch", logits((6, 4, 130))[::2]),
        ("4-d", logits((2, 1, 5, 300))[:, :, :-2]),
        ("few-rows-huge-vocab", logits((2, 3, 140000))[:, :-1]),
        ("threaded", logits((4, 65, 1000))[:, :-1]),
    ]


def _calls(target, valid_target, probability, weight, spans):
    """Every function, on logits x: ``target`` has ignored rows, ``valid_target`` none (for scoring)."""
    starts, lengths = spans
    return {
        "cross_entropy": lambda x: fx.cross_entropy(x, target, axis=-1),
        "none+weight+smoothing": lambda x: fx.cross_entropy(
            x, target, weight, axis=-1, reduction="none", label_smoothing=0.1
        ),
        "probability": lambda x: fx.cross_entropy(x, probability, axis=-1, reduction="sum"),
        "with_grad+z_loss": lambda x: fx.cross_entropy_with_grad(x, target, axis=-1, z_loss=1e-3),
        "grad+softcap": lambda x: fx.cross_entropy_grad(x, target, axis=-1, softcap=20.0),
        "loss class": lambda x: (lambda c: (c(x, target), c.backward()))(fx.CrossEntropyLoss(axis=-1)),
        "log_softmax": lambda x: fx.log_softmax(x),
        "softmax": lambda x: fx.softmax(x),
        "logsumexp": lambda x: fx.logsumexp(x),
        "nll_loss": lambda x: fx.nll_loss(x, target, axis=-1, reduction="none"),
        "score": lambda x: tuple(fx.score(x, valid_target)),
        "score_spans": lambda x: tuple(fx.score_spans(x, valid_target, starts, lengths)),
    }


def _flat(result):
    """The arrays of a result, in order (tuples and named tuples flattened)."""
    if isinstance(result, tuple):
        return [a for r in result for a in _flat(r)]
    return [np.asarray(result)]


@pytest.mark.parametrize("name", DTYPES)
def test_rows_in_blocks_give_the_bits_of_a_contiguous_copy(rng, name):
    dtype = _dtype(name)
    for layout, view in _views(rng, dtype):
        array, core_view = _arguments.class_view(view, view.ndim - 1)
        assert array is view and core_view[5] > 0, f"{layout}: not read in place as rows in blocks"
        copy = np.ascontiguousarray(view)
        row_shape, classes = view.shape[:-1], view.shape[-1]
        rows = int(np.prod(row_shape))
        target = rng.integers(0, classes, row_shape)
        target.reshape(-1)[::3] = -100
        probability = rng.dirichlet(np.ones(classes), rows).reshape(view.shape).astype(np.float32).astype(dtype)
        weight = (rng.random(classes) + 0.5).astype(np.float32).astype(dtype)
        spans = (np.array([0, rows // 2, 1]), np.array([rows // 2, rows - rows // 2, 0]))
        valid_target = np.where(target < 0, 0, target)
        for call, f in _calls(target, valid_target, probability, weight, spans).items():
            for got, expected in zip(_flat(f(view)), _flat(f(copy))):
                assert got.dtype == expected.dtype and got.shape == expected.shape, (layout, call)
                np.testing.assert_array_equal(
                    np.atleast_1d(got).view(np.uint8), np.atleast_1d(expected).view(np.uint8), err_msg=f"{layout}: {call}"
                )


def test_only_whole_rows_of_many_classes_are_read_in_blocks(rng):
    """Tiles of rows (up to TILE_CLASSES classes) and inner axes need rows one stride apart: such
    views are copied, and still give the copy's results."""
    for view, axis in [
        (rng.standard_normal((3, 9, _core.TILE_CLASSES))[:, :-1], -1),
        (rng.standard_normal((3, 9, 100, 2))[:, :-1], 2),
    ]:
        array, core_view = _arguments.class_view(view, view.ndim + axis if axis < 0 else axis)
        assert array is not view and core_view[5] == 0
        np.testing.assert_array_equal(fx.log_softmax(view, axis=axis), fx.log_softmax(np.ascontiguousarray(view), axis=axis))


@pytest.mark.parametrize(
    "view",
    [
        (6, 100, 1, 100, 1, 4, 500),  # 6 rows are not whole blocks of 4
        (6, 100, 2, 100, 1, 3, 500),  # an inner axis
        (6, _core.TILE_CLASSES, 1, 64, 1, 3, 500),  # classes that tiles would take
        (6, 100, 1, 100, 1, -3, 500),
    ],
)
def test_core_refuses_rows_in_blocks_that_kernels_would_tile(view):
    x = np.zeros(6000)
    with pytest.raises(ValueError, match="rows in blocks"):
        _core.softmax(x, view, 0, np.zeros(view[0] * view[1] * view[2]))
