"""The public functions: normalise the arguments, call ``_core`` once, return."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _arguments as args
from . import _core

ArrayLike = Any
_PLAIN_NUMBERS = (float, int)
Loss = Union[np.generic, np.ndarray]  # a NumPy scalar (ml_dtypes.bfloat16 included), or an array


def _softmax_family(x: ArrayLike, axis: Any, op: str, out: Optional[np.ndarray]) -> np.ndarray:
    if type(x) is not np.ndarray:
        x = args.numpy_view(x)  # torch tensors: see numpy_view
    if type(axis) is int and -1 <= axis < 64:
        result = _core.softmax_fast(x, args.SOFTMAX_OPS[op], axis, out)
        if result is not None:
            return result
    array, dtype = args.logits(x)
    axis = args.class_axis(array.ndim, axis, pytorch_default=False)
    shape = array.shape if op != "logsumexp" else array.shape[:axis] + array.shape[axis + 1 :]
    if out is not None:
        args.output(out, shape, dtype, (x, array), in_place=array)
    array, view = args.class_view(array, axis)
    if op == "logsumexp":
        result = np.empty(shape, args.compute_dtype(dtype))
    else:
        result = out if out is not None else args.new_result(shape, dtype)
    _core.softmax(args.core_array(array), view, args.SOFTMAX_OPS[op], args.core_array(result), args.half_code(dtype))
    # logsumexp of 16-bit logits is computed into float32, then rounded to their dtype.
    return args.cast(result, dtype)


def log_softmax(x: ArrayLike, axis: int = -1, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Log of the softmax along ``axis``: ``(x - max) - log(sum(exp(x - max)))``.

    ``x`` is any array of float16, bfloat16 (``ml_dtypes.bfloat16``), float32 or float64, or a CPU
    tensor of another library (read in place, without a copy); 16-bit logits are read directly
    and computed in float32. ``out``, if given, is a C-contiguous writeable array of ``x``'s shape and
    dtype that receives the result.
    Masked logits (``-inf``) give ``-inf``; a row of only ``-inf`` gives NaN, as in PyTorch.
    """
    return _softmax_family(x, axis, "log_softmax", out)


def softmax(x: ArrayLike, axis: int = -1, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``. Arguments as ``log_softmax``."""
    return _softmax_family(x, axis, "softmax", out)


def logsumexp(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis``, computed stably; the result has ``axis`` removed.

    A row of only ``-inf`` gives ``-inf``, any ``+inf`` gives ``+inf``, NaN propagates, and an empty
    axis gives ``-inf``.
    """
    return _softmax_family(x, axis, "logsumexp", None)


class _Problem(NamedTuple):
    """A cross-entropy call, normalised."""

    array: np.ndarray  # the logits (float16, bfloat16, float32, float64), strided as described by view
    view: args.View
    shape: Tuple[int, ...]  # the input's shape
    row_shape: Tuple[int, ...]  # the unreduced loss's shape
    dtype: np.dtype  # the results' dtype: the input's
    targets: args.Targets
    weight: Optional[np.ndarray]
    ignore_index: int
    label_smoothing: float
    reduction: int
    z_loss: float
    softcap: float  # 0.0 for none

    @property
    def rows(self) -> int:
        return self.view[0] * self.view[2]

    @property
    def compute(self) -> np.dtype:
        """The dtype of the per-row results and of everything but the logits: float32 for 16-bit logits."""
        return args.compute_dtype(self.dtype)

    def run(
        self,
        *,
        row_loss: Optional[np.ndarray] = None,
        grad: Optional[np.ndarray] = None,
        grad_output: float = 1.0,
        grad_rows: Optional[np.ndarray] = None,
        save_stats: Optional[np.ndarray] = None,
        saved_stats: Optional[np.ndarray] = None,
        want_sum: bool = False,
    ) -> Tuple[float, float]:
        return _core.cross_entropy(
            args.core_array(self.array),
            self.view,
            self.targets.index,
            self.targets.probability,
            self.weight,
            self.ignore_index,
            self.label_smoothing,
            self.z_loss,
            self.reduction,
            grad_output,
            grad_rows,
            row_loss,
            args.core_array(grad),
            save_stats,
            saved_stats,
            want_sum,
            args.half_code(self.dtype),
            self.softcap,
        )


def _prepare(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike,
    axis: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any = 0.0,
    softcap: Any = None,
) -> _Problem:
    array, dtype = args.logits(input)
    axis = args.class_axis(array.ndim, axis, pytorch_default=True)
    code = args.reduction_code(reduction)
    smoothing = args.smoothing(label_smoothing)
    ignore = args.ignore(ignore_index)
    cap = args.softcap(softcap)
    shape = array.shape
    compute = args.compute_dtype(dtype)
    targets = args.targets(target, compute, axis, shape)
    class_weight = args.class_weight(weight, shape[axis], compute)
    array, view = args.class_view(array, axis)
    row_shape = shape[:axis] + shape[axis + 1 :]
    z = args.z_loss(z_loss)
    return _Problem(array, view, shape, row_shape, dtype, targets, class_weight, ignore, smoothing, code, z, cap)


def _z_rows(problem: _Problem, stats: np.ndarray) -> np.ndarray:
    """z_loss * logsumexp^2 of every kept row, in float64, shaped like the unreduced loss."""
    lse = stats[:, 0] + stats[:, 1]
    infinite_max = np.isinf(stats[:, 0])
    if infinite_max.any():
        # The statistics of a row with an infinite max cannot tell a NaN from +-inf (their shifted sum
        # is inf - inf): its logsumexp is taken again from the logits, as logsumexp gives it (+inf
        # for a +inf logit, -inf for a row of -inf, NaN for a NaN; the capped logits are finite).
        again = np.empty(problem.rows, problem.compute)
        _core.softmax(
            args.core_array(problem.array),
            problem.view,
            args.SOFTMAX_OPS["logsumexp"],
            again,
            args.half_code(problem.dtype),
        )
        lse = np.where(infinite_max, again, lse)
    z_rows = problem.z_loss * (lse * lse)
    if problem.targets.index is not None:
        z_rows = np.where(problem.targets.index.reshape(-1) != problem.ignore_index, z_rows, 0.0)
    return z_rows.reshape(problem.row_shape)


def _loss(problem: _Problem, return_z_loss: bool = False, **run_options: Any) -> Any:
    """Runs the forward pass (plus whatever ``run_options`` ask) and returns the loss, or
    ``(loss, z_part)`` when ``return_z_loss``. The z-loss is formed from the per-row statistics."""
    stats = run_options.get("save_stats")
    if problem.z_loss != 0.0 and stats is None:
        stats = run_options["save_stats"] = np.zeros((problem.rows, 2), np.float64)
    if problem.reduction == args.REDUCTIONS["none"]:
        row_loss = args.new_result(problem.row_shape, problem.compute)
        problem.run(row_loss=row_loss, **run_options)
        if problem.z_loss == 0.0:
            z_part = np.zeros(problem.row_shape, problem.dtype) if return_z_loss else None
            loss = args.cast(row_loss, problem.dtype)
        else:
            z_rows = _z_rows(problem, stats)
            loss = args.cast(np.asarray(row_loss + z_rows), problem.dtype)  # 0-d arrays add to a scalar
            z_part = args.cast(z_rows, problem.dtype)
    else:
        total, denominator = problem.run(want_sum=True, **run_options)
        z_total = 0.0
        if problem.z_loss != 0.0:  # (only then: without one, a -0 sum of probability-target losses stays -0)
            z_total = float(np.sum(_z_rows(problem, stats)))
            total += z_total
        loss = args.reduce(total, denominator, problem.reduction, problem.dtype)
        z_part = args.reduce(z_total, denominator, problem.reduction, problem.dtype) if return_z_loss else None
    return (loss, z_part) if return_z_loss else loss


def _flag(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"return_z_loss must be a bool, got {value!r}")
    return bool(value)


def _plain_options(
    weight: Any,
    axis: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    return_z_loss: Any,
    softcap: Any,
    grad_output: Any = 1.0,
) -> bool:
    """Whether every option is at its default (or a plain value of its usual type; class weights may
    be any NumPy array): the common call, which ``_core`` may take without this layer's normalisation
    (it returns None when the arrays themselves need it)."""
    return (
        (weight is None or type(weight) is np.ndarray)
        and axis is None
        and type(reduction) is str
        and reduction in args.REDUCTIONS
        and type(label_smoothing) in _PLAIN_NUMBERS
        and label_smoothing == 0
        and type(z_loss) in _PLAIN_NUMBERS
        and z_loss == 0
        and return_z_loss is False
        and softcap is None
        and type(ignore_index) is int
        and -(2**63) <= ignore_index < 2**63
        and _plain_scalar(grad_output)
    )


def _plain_scalar(grad_output: Any) -> bool:
    """Whether ``grad_output`` is a Python float, or an int that the general path takes as well."""
    return type(grad_output) is float or (type(grad_output) is int and -(2**63) <= grad_output < 2**63)


def _grad_buffers(
    problem: _Problem, grad_output: Any, out: Optional[np.ndarray], inputs: Tuple[Any, ...], logits: Any
):
    """(scalar grad_output, per-row grad_output or None, the gradient array to fill): ``out``, or a
    new array of the input's dtype. For 16-bit logits ``out`` may also be float32."""
    scalar, rows = args.grad_rows(grad_output, problem.reduction, problem.row_shape, problem.compute)
    if out is not None:
        inputs = inputs + (problem.array, problem.targets.index, problem.targets.probability, problem.weight, rows)
        also = problem.compute if problem.compute != problem.dtype else None
        args.output(out, problem.shape, problem.dtype, inputs, in_place=logits, also=also)
        return scalar, rows, out
    return scalar, rows, args.new_result(problem.shape, problem.dtype)


def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike = None,
    *,
    axis: Optional[int] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
) -> Any:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    ``input`` holds logits (float16, bfloat16, float32 or float64, any layout, or a CPU tensor of
    another library, read in place without a copy; 16-bit logits are computed in float32 and
    give results in their own dtype); ``axis`` is the class axis
    (``None``: 0 for 1-D input, else 1). ``target`` holds class indices of any integer dtype, of the
    input's shape without the class axis, or class probabilities of the input's shape. ``weight``
    is an optional 1-D array of per-class weights. Rows whose index target equals ``ignore_index``
    are dropped. ``reduction`` is ``"mean"`` (divided by the summed weights of the kept rows; by the
    number of rows for probability targets), ``"sum"`` or ``"none"``. ``label_smoothing`` in [0, 1]
    mixes the target with the uniform distribution.

    ``z_loss`` > 0 adds the auxiliary loss ``z_loss * logsumexp(row)**2`` of every kept row (PaLM's
    z-loss), reduced like the main loss (``mean`` divides by the same denominator); with
    ``return_z_loss=True`` the result is ``(loss, z_part)``, the z-loss part on its own (it is
    included in ``loss``).

    ``softcap`` > 0 passes the logits through ``softcap * tanh(input / softcap)`` first (Gemma-2's
    logit soft-capping): the loss, its z-loss and every statistic are those of the capped logits,
    and the gradients are with respect to ``input``.

    Returns a NumPy scalar of the input's dtype for ``"mean"``/``"sum"`` (accumulated in float64),
    else an array of the per-row losses. Raises ``IndexError`` for a target outside [0, C),
    ``ValueError`` for mismatched shapes or bad options, ``TypeError`` for non-float logits, an
    ``ignore_index`` that is not an integer, or a ``return_z_loss`` that is not a bool.
    """
    if type(input) is not np.ndarray or type(target) is not np.ndarray:
        input, target = args.numpy_view(input), args.numpy_view(target)  # torch tensors: see numpy_view
    # _plain_options, written out: calling it would add about 3% to the time of a 32 x 10 loss.
    if (
        (weight is None or type(weight) is np.ndarray)
        and axis is None
        and type(reduction) is str
        and reduction in args.REDUCTIONS
        and type(label_smoothing) in _PLAIN_NUMBERS
        and label_smoothing == 0
        and type(z_loss) in _PLAIN_NUMBERS
        and z_loss == 0
        and return_z_loss is False
        and softcap is None
        and type(ignore_index) is int
        and -(2**63) <= ignore_index < 2**63
    ):
        loss = _core.cross_entropy_fast(input, target, ignore_index, args.REDUCTIONS[reduction], weight)
        if loss is not None:
            if reduction == "none":
                return loss
            # args.scalar, its common case inline (65504 is args.SMALLEST_MAX): this path's cost is
            # the call's overhead.
            return input.dtype.type(loss) if -65504.0 <= loss <= 65504.0 else args.scalar(loss, input.dtype)
    problem = _prepare(input, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _loss(problem, _flag(return_z_loss))


def cross_entropy_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike = None,
    *,
    axis: Optional[int] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    grad_output: ArrayLike = 1.0,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """d loss / d input for ``cross_entropy`` with the same arguments, shaped like ``input``.

    ``grad_output`` is the gradient flowing into the loss: a scalar, or for ``reduction="none"`` an
    array of the per-row loss shape. ``out``, if given, is a C-contiguous writeable array of the
    input's shape and dtype (or float32, for 16-bit logits), filled and returned. Nothing is written
    when an argument is invalid. For 16-bit logits the gradient is computed in float32 and rounded
    once to the logits' dtype.
    """
    if type(input) is not np.ndarray or type(target) is not np.ndarray:
        input, target = args.numpy_view(input), args.numpy_view(target)  # torch tensors: see numpy_view
    if _plain_options(weight, axis, ignore_index, reduction, label_smoothing, z_loss, False, softcap, grad_output):
        grad = _core.cross_entropy_fast_with(
            input, target, ignore_index, args.REDUCTIONS[reduction], float(grad_output), False, True, out, None, None,
            weight,
        )
        if grad is not None:
            return grad
    problem = _prepare(input, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap)
    scalar, rows, grad = _grad_buffers(problem, grad_output, out, (input, target, weight), problem.array)
    problem.run(grad=grad, grad_output=scalar, grad_rows=rows)
    return grad


def cross_entropy_with_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike = None,
    *,
    axis: Optional[int] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    grad_output: ArrayLike = 1.0,
    out: Optional[np.ndarray] = None,
) -> Tuple[Any, np.ndarray]:
    """``(cross_entropy(...), cross_entropy_grad(...))`` from one pass over the logits: each row is
    read once, and its gradient written straight into the result (or ``out``). With
    ``return_z_loss=True`` the first element is ``(loss, z_part)``. The loss sums the exponentials
    the gradient is made of, and may differ from ``cross_entropy``'s in the last bit."""
    if type(input) is not np.ndarray or type(target) is not np.ndarray:
        input, target = args.numpy_view(input), args.numpy_view(target)  # torch tensors: see numpy_view
    if _plain_options(
        weight, axis, ignore_index, reduction, label_smoothing, z_loss, return_z_loss, softcap, grad_output
    ):
        result = _core.cross_entropy_fast_with(
            input, target, ignore_index, args.REDUCTIONS[reduction], float(grad_output), True, True, out, None, None,
            weight,
        )
        if result is not None:
            loss, grad = result
            return (loss if reduction == "none" else args.scalar(loss, input.dtype)), grad
    problem = _prepare(input, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap)
    scalar, rows, grad = _grad_buffers(problem, grad_output, out, (input, target, weight), problem.array)
    loss = _loss(problem, _flag(return_z_loss), grad=grad, grad_output=scalar, grad_rows=rows)
    return loss, grad


def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike = None,
    *,
    axis: Optional[int] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Loss:
    """Negative log-likelihood of log-probabilities, as ``torch.nn.functional.nll_loss``:
    ``-w[t] * log_probs[t]`` per row, reduced like ``cross_entropy``. Index targets only; 16-bit
    log-probabilities are read in place (one element a row)."""
    if type(log_probs) is not np.ndarray or type(target) is not np.ndarray:
        log_probs, target = args.numpy_view(log_probs), args.numpy_view(target)
    if _plain_options(weight, axis, ignore_index, reduction, 0.0, 0.0, False, None):
        loss = _core.nll_loss_fast(log_probs, target, ignore_index, args.REDUCTIONS[reduction], weight)
        if loss is not None:
            return loss if reduction == "none" else args.scalar(loss, log_probs.dtype)
    array, dtype = args.logits(log_probs, "log_probs")
    compute = args.compute_dtype(dtype)  # 16-bit log-probabilities are read as they are, in float32
    axis = args.class_axis(array.ndim, axis, pytorch_default=True)
    code = args.reduction_code(reduction)
    ignore = args.ignore(ignore_index)
    shape = array.shape
    targets = args.targets(target, compute, axis, shape)
    if targets.index is None:
        raise TypeError("nll_loss takes class indices (an integer dtype) as target")
    class_weight = args.class_weight(weight, shape[axis], compute)
    array, view = args.class_view(array, axis)
    row_shape = shape[:axis] + shape[axis + 1 :]
    row_loss = np.empty(row_shape, compute) if code == args.REDUCTIONS["none"] else None
    total, denominator = _core.nll_loss(
        args.core_array(array), view, targets.index, class_weight, ignore, row_loss, args.half_code(dtype)
    )
    if row_loss is not None:
        return args.cast(row_loss, dtype)
    return args.reduce(total, denominator, code, dtype)
