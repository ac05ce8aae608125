"""A float64 NumPy reference of the whole fastxent contract (SPEC.md).

Written from the formulas in SPEC.md, for clarity rather than speed: every
function upcasts to float64, moves the class axis last and works on a
``(rows, C)`` matrix. Scalars come back as ``numpy.float64``, arrays as
float64 ndarrays. The reference raises the same exception types as the
contract for out-of-range targets and mismatched shapes, so that a wrong
test case fails loudly instead of producing garbage.
"""

from __future__ import annotations

import numpy as np

REDUCTIONS = ("none", "sum", "mean")


def class_axis(ndim: int, axis: int | None) -> int:
    """The class axis as a non-negative int (``None`` is PyTorch's convention)."""
    if ndim == 0:
        raise ValueError("0-d input has no class axis")
    if axis is None:
        return 0 if ndim == 1 else 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def _as_float64(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"expected floating-point values, got dtype {x.dtype}")
    return x.astype(np.float64)


# ---------------------------------------------------------------------------
# softmax family
# ---------------------------------------------------------------------------


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """``x - max - log(sum(exp(x - max)))`` along ``axis``.

    -inf logits give -inf; a row of all -inf gives NaN (``-inf - -inf``).
    """
    x = _as_float64(x)
    axis = class_axis(x.ndim, axis)
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis: int = -1) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (a row of all -inf gives NaN)."""
    x = _as_float64(x)
    axis = class_axis(x.ndim, axis)
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        unnormalised = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return unnormalised / np.sum(unnormalised, axis=axis, keepdims=True)


def logsumexp(x, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(x)))`` along ``axis``, with ``axis`` removed.

    All -inf gives -inf, any +inf gives +inf, NaN propagates, an empty axis gives -inf.
    """
    x = _as_float64(x)
    axis = class_axis(x.ndim, axis)
    if x.shape[axis] == 0:
        return np.full(x.shape[:axis] + x.shape[axis + 1 :], -np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        row_max = np.max(x, axis=axis, keepdims=True)
        # Shift by the maximum only where it is finite: an infinite maximum
        # would turn the row into NaNs; unshifted, exp gives 0 or +inf instead.
        shift = np.where(np.isfinite(row_max), row_max, 0.0)
        total = np.sum(np.exp(x - shift), axis=axis, keepdims=True)
        return np.squeeze(np.log(total) + shift, axis=axis)


# ---------------------------------------------------------------------------
# argument normalisation shared by the losses
# ---------------------------------------------------------------------------


class _Problem:
    """Logits as a ``(rows, C)`` float64 matrix plus everything needed to undo it."""

    def __init__(self, input, target, weight, axis, reduction, label_smoothing, allow_probabilities=True):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}")
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        x = _as_float64(input)
        self.input_shape = x.shape
        self.axis = class_axis(x.ndim, axis)
        self.num_classes = x.shape[self.axis]
        self.row_shape = x.shape[: self.axis] + x.shape[self.axis + 1 :]
        self.logits = np.moveaxis(x, self.axis, -1).reshape(-1, self.num_classes)
        self.num_rows = self.logits.shape[0]
        self.reduction = reduction
        self.smoothing = label_smoothing

        if weight is None:
            self.weight = np.ones(self.num_classes)
        else:
            w = _as_float64(weight)
            if w.shape != (self.num_classes,):
                raise ValueError(f"weight must have shape ({self.num_classes},), got {w.shape}")
            self.weight = w

        target = np.asarray(target)
        self.is_probability = target.dtype.kind == "f"
        if self.is_probability:
            if not allow_probabilities:
                raise TypeError("class-probability targets are not accepted here")
            if target.shape != x.shape:
                raise ValueError(f"probability target shape {target.shape} != input shape {x.shape}")
            self.probabilities = np.moveaxis(target.astype(np.float64), self.axis, -1).reshape(
                -1, self.num_classes
            )
        else:
            if target.dtype.kind not in "iu":
                raise TypeError(f"target must hold integers or probabilities, got dtype {target.dtype}")
            expected = self.row_shape
            if not (target.shape == expected or (x.ndim == 1 and target.shape == (1,))):
                raise ValueError(f"target shape {target.shape} does not match input shape {x.shape}")
            self.target = target.reshape(-1)

    def set_index_targets(self, ignore_index: int) -> None:
        t = self.target
        # NumPy compares integer arrays with Python ints exactly, whatever the
        # array's dtype: an unsigned target never equals a negative ignore_index,
        # and a uint64 target above 2**63 is reported as itself.
        self.valid = t != int(ignore_index)
        bad = self.valid & ((t < 0) | (t >= self.num_classes))
        if np.any(bad):
            value = int(t[np.argmax(bad)])
            raise IndexError(f"target {value} is out of bounds for {self.num_classes} classes")
        self.safe_target = np.where(self.valid, t, 0).astype(np.int64)
        self.target_weight = np.where(
            self.valid, self.weight[self.safe_target] if self.num_classes else 0.0, 0.0
        )

    def reduce(self, per_row: np.ndarray, denominator: float):
        if self.reduction == "none":
            return per_row.reshape(self.row_shape)
        total = np.sum(per_row, dtype=np.float64)
        if self.reduction == "sum":
            return np.float64(total)
        if denominator == 0:
            return np.float64(np.nan)  # SPEC: D = 0 gives NaN (PyTorch's unsmoothed part is 0 / 0)
        return np.float64(total) / np.float64(denominator)

    def row_scale(self, grad_output, denominator: float) -> np.ndarray:
        """s_i of SPEC's gradient formulas, one per row."""
        if self.reduction == "none":
            g = np.asarray(grad_output, dtype=np.float64)
            if g.ndim == 0:
                return np.full(self.num_rows, float(g))
            if g.shape != self.row_shape:
                raise ValueError(f"grad_output shape {g.shape} != loss shape {self.row_shape}")
            return g.reshape(-1)
        g = float(np.asarray(grad_output, dtype=np.float64))
        if self.reduction == "sum":
            return np.full(self.num_rows, g)
        if denominator == 0:
            return np.zeros(self.num_rows)
        return np.full(self.num_rows, g / denominator)

    def unflatten(self, rows_by_class: np.ndarray) -> np.ndarray:
        moved_shape = self.row_shape + (self.num_classes,)
        return np.ascontiguousarray(np.moveaxis(rows_by_class.reshape(moved_shape), -1, self.axis))


def _smoothed(problem: _Problem) -> np.ndarray:
    y = problem.probabilities
    e = problem.smoothing
    if e > 0:
        return (1.0 - e) * y + e / problem.num_classes
    return y


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------


def _cross_entropy_rows(problem: _Problem, ignore_index: int):
    """(per-row losses, denominator D) for either kind of target."""
    lsm = log_softmax(problem.logits, axis=-1)
    w = problem.weight
    e = problem.smoothing
    C = problem.num_classes
    with np.errstate(invalid="ignore", over="ignore"):
        if problem.is_probability:
            per_row = -np.sum(w * _smoothed(problem) * lsm, axis=-1)
            return per_row, float(problem.num_rows)
        problem.set_index_targets(ignore_index)
        valid = problem.valid
        rows = np.arange(problem.num_rows)
        picked = lsm[rows, problem.safe_target] if C else np.zeros(problem.num_rows)
        per_row = (1.0 - e) * (-problem.target_weight * picked)
        if e > 0:
            per_row = per_row + (e / C) * (-np.sum(w * lsm, axis=-1))
        per_row = np.where(valid, per_row, 0.0)
        return per_row, float(np.sum(problem.target_weight))


def cross_entropy(
    input,
    target,
    weight=None,
    *,
    axis=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
):
    """SPEC's forward for index and probability targets, in float64."""
    problem = _Problem(input, target, weight, axis, reduction, label_smoothing)
    per_row, denominator = _cross_entropy_rows(problem, ignore_index)
    return problem.reduce(per_row, denominator)


def cross_entropy_grad(
    input,
    target,
    weight=None,
    *,
    axis=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_output=1.0,
) -> np.ndarray:
    """SPEC's closed-form d loss / d input, shaped like ``input``."""
    problem = _Problem(input, target, weight, axis, reduction, label_smoothing)
    _, denominator = _cross_entropy_rows(problem, ignore_index)
    p = softmax(problem.logits, axis=-1)
    w = problem.weight
    e = problem.smoothing
    C = problem.num_classes
    s = problem.row_scale(grad_output, denominator)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        if problem.is_probability:
            y = _smoothed(problem)
            grad = s * (p * np.sum(w * y, axis=-1, keepdims=True) - w * y)
        else:
            wt = problem.target_weight[:, None]
            one_hot = np.zeros_like(p)
            if C:
                one_hot[np.arange(problem.num_rows), problem.safe_target] = 1.0
            W = np.sum(w)
            bracket = p * ((1.0 - e) * wt + e * W / C) - (1.0 - e) * wt * one_hot - (e / C) * w
            grad = np.where(problem.valid[:, None], s * bracket, 0.0)
    if reduction == "mean" and denominator == 0:
        grad = np.zeros_like(grad)
    return problem.unflatten(grad)


def cross_entropy_with_grad(input, target, weight=None, **kwargs):
    """``(cross_entropy(...), cross_entropy_grad(...))``."""
    forward_kwargs = {k: v for k, v in kwargs.items() if k != "grad_output"}
    return (
        cross_entropy(input, target, weight, **forward_kwargs),
        cross_entropy_grad(input, target, weight, **kwargs),
    )


def nll_loss(
    log_probs,
    target,
    weight=None,
    *,
    axis=None,
    ignore_index: int = -100,
    reduction: str = "mean",
):
    """``l_i = -v_i * w[t_i] * log_probs[i, t_i]``; ``mean`` divides by D = sum_i v_i w[t_i]."""
    problem = _Problem(log_probs, target, weight, axis, reduction, 0.0, allow_probabilities=False)
    problem.set_index_targets(ignore_index)
    rows = np.arange(problem.num_rows)
    picked = problem.logits[rows, problem.safe_target] if problem.num_classes else np.zeros(problem.num_rows)
    with np.errstate(invalid="ignore"):
        per_row = np.where(problem.valid, -problem.target_weight * picked, 0.0)
    return problem.reduce(per_row, float(np.sum(problem.target_weight)))
