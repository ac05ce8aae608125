"""The loss class: a forward call that remembers what its backward needs."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _arguments as args
from ._functional import ArrayLike, _flag, _grad_buffers, _loss, _prepare, _Problem


class CrossEntropyLoss:
    """Softmax cross-entropy as a callable, like ``torch.nn.CrossEntropyLoss``, with a backward.

    ``loss = crit(input, target)`` (or ``crit.forward``) computes ``cross_entropy`` with the options
    given here (``z_loss``, ``return_z_loss`` and ``softcap`` as there);
    ``crit.backward(grad_output=1.0)`` returns d loss / d input of the last call. Between the two it
    keeps a reference to the logits (not a copy: write the next batch into the same buffer only
    after ``backward``, as with any autograd framework), a copy of the class indices and the per-row
    max and log-sum-exp (16 bytes a row), so that ``backward`` reads the logits once and no N x C
    buffer is kept. Probability targets are kept by reference too.
    """

    def __init__(
        self,
        weight: ArrayLike = None,
        *,
        axis: Optional[int] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        return_z_loss: bool = False,
        softcap: Optional[float] = None,
    ) -> None:
        args.reduction_code(reduction)
        args.smoothing(label_smoothing)
        args.ignore(ignore_index)
        args.z_loss(z_loss)
        args.softcap(softcap)
        self.z_loss = z_loss
        self.softcap = softcap
        self.return_z_loss = _flag(return_z_loss)
        self.weight = None if weight is None else np.asarray(weight)
        self.axis = axis
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self._problem: Optional[_Problem] = None
        self._stats: Optional[np.ndarray] = None

    def forward(self, input: ArrayLike, target: ArrayLike) -> Any:
        """The loss of ``input`` against ``target`` (``(loss, z_part)`` with ``return_z_loss``);
        remembers what ``backward`` needs."""
        problem = _prepare(
            input, target, self.weight, self.axis, self.ignore_index, self.reduction, self.label_smoothing,
            self.z_loss, self.softcap,
        )
        if problem.targets.index is not None:
            # Class indices are O(rows): keep a private copy, so that reusing the target buffer for
            # the next batch before backward() cannot change this call's gradient.
            problem = problem._replace(targets=problem.targets._replace(index=problem.targets.index.copy()))
        stats = np.zeros((problem.rows, 2), np.float64)
        loss = _loss(problem, self.return_z_loss, save_stats=stats)
        self._problem, self._stats = problem, stats
        return loss

    __call__ = forward

    def backward(self, grad_output: ArrayLike = 1.0, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """d loss / d input of the last ``forward`` call, times ``grad_output`` (a scalar, or for
        ``reduction="none"`` an array of the loss's shape). ``out`` as in ``cross_entropy_grad``."""
        problem = self._problem
        if problem is None:
            raise RuntimeError("backward() was called before forward(): there is no loss to differentiate")
        scalar, rows, grad = _grad_buffers(problem, grad_output, out, (), problem.array)
        problem.run(grad=grad, grad_output=scalar, grad_rows=rows, saved_stats=self._stats)
        return grad

    def __repr__(self) -> str:
        weight = None if self.weight is None else f"array(shape={self.weight.shape})"
        return (
            f"CrossEntropyLoss(weight={weight}, axis={self.axis}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"return_z_loss={self.return_z_loss}, softcap={self.softcap})"
        )
