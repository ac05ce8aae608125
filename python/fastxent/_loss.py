"""The loss class: a forward call that remembers what its backward needs."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _arguments as args
from . import _core
from ._functional import ArrayLike, _flag, _grad_buffers, _loss, _plain_options, _plain_scalar, _prepare, _Problem


class CrossEntropyLoss:
    """Softmax cross-entropy as a callable, like ``torch.nn.CrossEntropyLoss``, with a backward.

    ``loss = crit(input, target)`` (or ``crit.forward``) computes ``cross_entropy`` with the options
    given here (``z_loss``, ``return_z_loss`` and ``softcap`` as there);
    ``crit.backward(grad_output=1.0)`` returns d loss / d input of the last call. Between the two it
    keeps a reference to the logits (not a copy: write the next batch into the same buffer only
    after ``backward``, as with any autograd framework), a copy of the class indices and the per-row
    max and log-sum-exp (16 bytes a row), so that ``backward`` reads the logits once and no N x C
    buffer of its own is kept. Probability targets are kept by reference too. Logits in a layout
    that is copied before the kernels run, and probability targets of another float dtype than the
    logits, are kept as that copy (so a later write to the caller's buffer does not reach
    ``backward``). The loss is
    ``cross_entropy_with_grad``'s, which may differ from ``cross_entropy``'s in the last bit.
    An instance shared by threads gives, in ``backward``, the gradient of whichever thread's
    ``forward`` ran last: use one instance per thread.
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
        self.weight = None if weight is None else args.real_array(weight)
        self.axis = axis
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        # What backward needs of the last forward, set in one assignment and read once, so that an
        # instance shared by threads never pairs one call's logits with another call's statistics:
        # (problem, saved row statistics, the caller's arrays, which backward's out= must not overlap
        # either: the problem may hold copies). For the common call (see _plain_forward) the problem
        # is (logits, int64 indices, ignore_index, reduction code, class weights or None), made a
        # _Problem only if backward needs the general path.
        self._last: Optional[Tuple[Any, np.ndarray, Tuple[Any, ...]]] = None

    def forward(self, input: ArrayLike, target: ArrayLike) -> Any:
        """The loss of ``input`` against ``target`` (``(loss, z_part)`` with ``return_z_loss``);
        remembers what ``backward`` needs."""
        if type(input) is not np.ndarray or type(target) is not np.ndarray:
            input, target = args.numpy_view(input), args.numpy_view(target)  # torch tensors: see numpy_view
        if (
            type(input) is np.ndarray
            and type(target) is np.ndarray
            and _plain_options(
                self.weight, self.axis, self.ignore_index, self.reduction, self.label_smoothing, self.z_loss,
                self.return_z_loss, self.softcap,
            )
        ):
            loss = self._plain_forward(input, target)
            if loss is not None:
                return loss
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
        self._last = (problem, stats, (input, target))
        return loss

    __call__ = forward

    def _plain_forward(self, input: np.ndarray, target: np.ndarray) -> Any:
        """``forward`` for the common call (see ``cross_entropy``: (N, C) or (N, C, d1, ...) logits,
        class weights of their dtype or none), taken by ``_core`` directly; None when the arrays
        need the general path."""
        kind, size = target.dtype.kind, target.dtype.itemsize
        if not (kind == "i" or (kind == "u" and size <= 4)):
            return None
        # As in the general path: a private int64 copy of the indices. When _core takes the call, the
        # targets have the logits' row shape, so there is one row of statistics per target.
        index = target.astype(np.int64, order="C")
        stats = np.zeros((index.size, 2), np.float64)
        code = args.REDUCTIONS[self.reduction]
        weight = self.weight
        loss = _core.cross_entropy_fast_with(
            input, index, self.ignore_index, code, 1.0, True, False, None, stats, None, weight
        )
        if loss is None:
            return None
        self._last = ((input, index, self.ignore_index, code, weight), stats, (target,))
        return loss if code == args.REDUCTIONS["none"] else args.scalar(loss, input.dtype)

    def backward(self, grad_output: ArrayLike = 1.0, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """d loss / d input of the last ``forward`` call, times ``grad_output`` (a scalar, or for
        ``reduction="none"`` an array of the loss's shape). ``out`` as in ``cross_entropy_grad``."""
        last = self._last
        if last is None:
            raise RuntimeError("backward() was called before forward(): there is no loss to differentiate")
        problem, stats, originals = last
        if type(problem) is tuple:  # the common call's (see _plain_forward)
            input, index, ignore_index, code, weight = problem
            if _plain_scalar(grad_output) and not _overlaps(out, originals):
                grad = _core.cross_entropy_fast_with(
                    input, index, ignore_index, code, float(grad_output), False, True, out, None, stats, weight
                )
                if grad is not None:
                    return grad
            _, view = args.class_view(input, 1)  # C-contiguous: the view of the array itself
            problem = _Problem(
                input, view, input.shape, index.shape, input.dtype, args.Targets(index, None), weight,
                ignore_index, 0.0, code, 0.0, 0.0,
            )
        scalar, rows, grad = _grad_buffers(problem, grad_output, out, originals, problem.array)
        problem.run(grad=grad, grad_output=scalar, grad_rows=rows, saved_stats=stats)
        return grad

    def __repr__(self) -> str:
        weight = None if self.weight is None else f"array(shape={self.weight.shape})"
        return (
            f"CrossEntropyLoss(weight={weight}, axis={self.axis}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"return_z_loss={self.return_z_loss}, softcap={self.softcap})"
        )


def _overlaps(out: Optional[np.ndarray], arrays: Tuple[Any, ...]) -> bool:
    """Whether ``out`` may share memory with one of the NumPy arrays among ``arrays``."""
    if out is None:
        return False
    return any(isinstance(array, np.ndarray) and np.may_share_memory(out, array) for array in arrays)
