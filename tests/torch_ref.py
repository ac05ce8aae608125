"""The same contract computed by torch.nn.functional, with autograd gradients.

Import only after ``pytest.importorskip("torch")``. Arrays go in and come out
as NumPy arrays in the dtype they came in (torch computes in that dtype).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import reference as ref


def _tensor(a, requires_grad=False):
    # torch.tensor copies, so read-only or strided NumPy inputs are fine.
    return torch.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)


def _to_numpy(t):
    return t.detach().numpy().copy()


def _classes_to_dim1(t, axis, ndim):
    """Move the class axis where torch expects it (dim 1, or dim 0 for 1-D input)."""
    return t if ndim == 1 else torch.movedim(t, axis, 1)


def _backward(loss, reduction, grad_output):
    if reduction == "none":
        g = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), tuple(loss.shape))
        loss.backward(torch.tensor(g, dtype=loss.dtype))
    else:
        loss.backward(torch.tensor(float(grad_output), dtype=loss.dtype))


def cross_entropy_with_grad(
    input,
    target,
    weight=None,
    *,
    axis=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    grad_output=1.0,
):
    """(loss, d loss / d input) from ``F.cross_entropy`` and autograd."""
    input = np.asarray(input)
    a = ref.class_axis(input.ndim, axis)
    x = _tensor(input, requires_grad=True)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        t = _classes_to_dim1(_tensor(target), a, input.ndim)
    else:
        t = torch.tensor(target.astype(np.int64).reshape(target.shape if input.ndim > 1 else ()))
    w = None if weight is None else _tensor(np.asarray(weight, dtype=input.dtype))
    if target.dtype.kind == "f":
        # torch refuses ignore_index with probability targets; SPEC ignores it.
        ignore_index = -100
    loss = F.cross_entropy(
        _classes_to_dim1(x, a, input.ndim),
        t,
        weight=w,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    _backward(loss, reduction, grad_output)
    return _to_numpy(loss), _to_numpy(x.grad)


def nll_loss(log_probs, target, weight=None, *, axis=None, ignore_index=-100, reduction="mean"):
    log_probs = np.asarray(log_probs)
    a = ref.class_axis(log_probs.ndim, axis)
    target = np.asarray(target)
    t = torch.tensor(target.astype(np.int64).reshape(target.shape if log_probs.ndim > 1 else ()))
    w = None if weight is None else _tensor(np.asarray(weight, dtype=log_probs.dtype))
    loss = F.nll_loss(
        _classes_to_dim1(_tensor(log_probs), a, log_probs.ndim),
        t,
        weight=w,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    return _to_numpy(loss)


def log_softmax(x, axis=-1):
    return _to_numpy(F.log_softmax(_tensor(x), dim=axis))


def softmax(x, axis=-1):
    return _to_numpy(F.softmax(_tensor(x), dim=axis))


def logsumexp(x, axis=-1):
    return _to_numpy(torch.logsumexp(_tensor(x), dim=axis))
