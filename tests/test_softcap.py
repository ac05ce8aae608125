"""Logit soft-capping (Gemma-2): ``softcap * tanh(x / softcap)`` before the softmax, in
cross_entropy, cross_entropy_grad, cross_entropy_with_grad and CrossEntropyLoss, with the exact
gradient with respect to the uncapped logits; checked against a float64 formula and torch autograd."""

import numpy as np
import pytest

import fastxent as fx

import reference as ref
from cases import tolerance
from test_z_loss import z_reference

# (shape, class axis): contiguous rows, few classes (transposed tiles), class axis not last (tiles),
# and few rows of many classes (rows split into chunks).
LAYOUTS = [
    ((23, 40), None),
    ((300, 5), None),
    ((4, 9, 3, 7), None),
    ((3, 70000), None),
    ((2, 6, 50), -1),
]
OPTIONS = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1, weight=True),
    dict(reduction="none", ignore_some=True),
    dict(z_loss=1e-3),
    dict(probability=True, label_smoothing=0.05),
]


def _problem(rng, shape, axis, options, dtype):
    class_axis = (0 if len(shape) == 1 else 1) if axis is None else axis % len(shape)
    classes = shape[class_axis]
    row_shape = shape[:class_axis] + shape[class_axis + 1 :]
    x = (8.0 * rng.standard_normal(shape)).astype(dtype)
    x.reshape(-1)[::31] = -np.inf  # masks become -softcap, a finite logit
    kwargs = dict(axis=axis)
    for key in ("reduction", "label_smoothing", "z_loss"):
        if key in options:
            kwargs[key] = options[key]
    if options.get("weight"):
        kwargs["weight"] = rng.uniform(0.25, 2.0, classes).astype(dtype)
    if options.get("probability"):
        target = ref.softmax(rng.standard_normal(shape), axis=class_axis).astype(dtype)
    else:
        target = rng.integers(0, classes, row_shape)
        if options.get("ignore_some"):
            target = np.where(rng.random(row_shape) < 0.3, -100, target)
    return x, target, kwargs, class_axis


def _capped(x, cap):
    """The capped logits and d capped / d x, in float64."""
    z = np.asarray(x, np.float64) / cap
    return cap * np.tanh(z), 1.0 / np.cosh(z) ** 2


def _expected(x, target, kwargs, cap):
    y, slope = _capped(x, cap)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "z_loss"}
    if "weight" in ref_kwargs:
        ref_kwargs["weight"] = ref_kwargs["weight"].astype(np.float64)
    target64 = target.astype(np.float64) if target.dtype.kind == "f" else target
    loss, _ = z_reference(y, target64, **ref_kwargs, z_loss=kwargs.get("z_loss", 0.0))
    grad = ref.cross_entropy_grad(y, target64, **ref_kwargs)
    if kwargs.get("z_loss", 0.0):
        # d (z * lse^2) / d y = 2 z lse p, for kept rows, divided like the loss
        class_axis = (0 if y.ndim == 1 else 1) if kwargs.get("axis") is None else kwargs["axis"] % y.ndim
        lse = np.expand_dims(ref.logsumexp(y, axis=class_axis), class_axis)
        p = ref.softmax(y, axis=class_axis)
        kept = np.ones(lse.shape) if target.dtype.kind == "f" else np.expand_dims(target != -100, class_axis)
        _, z_part_unit = z_reference(y, target64, **ref_kwargs, z_loss=1.0)
        denominator = 1.0
        if kwargs.get("reduction", "mean") == "mean":
            z_sum = np.where(kept, lse**2, 0.0).sum()
            denominator = z_sum / z_part_unit if z_part_unit else 1.0
        grad = grad + 2.0 * kwargs["z_loss"] * lse * p * kept / denominator
    return loss, grad * slope


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("cap", [30.0, 2.5])
def test_against_float64_formula(rng, dtype, shape, axis, options, cap):
    x, target, kwargs, _ = _problem(rng, shape, axis, options, dtype)
    expected_loss, expected_grad = _expected(x, target, kwargs, cap)
    loss, grad = fx.cross_entropy_with_grad(x, target, softcap=cap, **kwargs)
    tol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(loss, np.float64), expected_loss, rtol=tol["rtol"] * 4, atol=tol["atol"] * 4)
    scale = max(1.0, np.abs(expected_grad).max())
    np.testing.assert_allclose(grad.astype(np.float64), expected_grad, rtol=tol["rtol"] * 4, atol=tol["atol"] * 4 * scale)
    assert grad.dtype == np.dtype(dtype)
    # the gradient functions and the class agree exactly; the loss alone sums cheaper exponentials
    # (see loss.cpp), so it may differ from theirs in the last bit
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(fx.cross_entropy(x, target, softcap=cap, **kwargs), loss, rtol=4 * eps, atol=4 * eps)
    np.testing.assert_array_equal(fx.cross_entropy_grad(x, target, softcap=cap, **kwargs), grad)
    crit = fx.CrossEntropyLoss(
        kwargs.get("weight"), axis=axis, reduction=kwargs.get("reduction", "mean"),
        label_smoothing=kwargs.get("label_smoothing", 0.0), z_loss=kwargs.get("z_loss", 0.0), softcap=cap,
    )
    np.testing.assert_array_equal(crit(x, target), loss)
    np.testing.assert_array_equal(crit.backward(), grad)


def test_capping_is_not_a_no_op(rng):
    x = 20.0 * rng.standard_normal((8, 12))
    target = rng.integers(0, 12, 8)
    assert abs(fx.cross_entropy(x, target, softcap=5.0) - fx.cross_entropy(x, target)) > 0.1
    # a huge cap is the identity, to float64 rounding
    np.testing.assert_allclose(fx.cross_entropy(x, target, softcap=1e12), fx.cross_entropy(x, target), rtol=1e-12)


def test_masks_nan_and_infinity():
    x = np.array([[-np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0]], np.float32)
    loss, grad = fx.cross_entropy_with_grad(x, np.array([1, 1, 0]), softcap=3.0, reduction="none")
    y, _ = _capped(x[0], 3.0)
    np.testing.assert_allclose(loss[0], -ref.log_softmax(y)[1], rtol=1e-6)  # -inf became -3
    assert np.isfinite(grad[0]).all() and grad[0, 0] == 0.0  # tanh is flat at -inf
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    y, _ = _capped(x[2], 3.0)
    np.testing.assert_allclose(loss[2], -ref.log_softmax(y)[0], rtol=1e-6)  # +inf became +3
    assert grad[2, 0] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape, axis", [((6, 3), None), ((600, 3), None), ((2, 3, 300), 1), ((4, 3000), None)])
def test_an_ignored_row_with_a_nan_has_a_zero_gradient_as_without_a_cap(dtype, shape, axis):
    """An ignored row's gradient is 0 whatever its logits (SPEC's v_i = 0), with a cap too: the cap's
    slope at a NaN (NaN) once made its zeros NaN."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    class_axis = 1
    target = rng.integers(0, shape[class_axis], shape[:1] + shape[2:])
    index = (0,) * (len(shape) - 2)
    row = (0, slice(None)) + index
    x[(0, 1) + index] = np.nan
    x[(1, 0) + index] = np.inf
    x[(1, 1) + index] = -np.inf
    target[(0,) + index] = -100
    target[(1,) + index] = -100
    for reduction in ("mean", "sum", "none"):
        capped = fx.cross_entropy_grad(x, target, axis=axis, reduction=reduction, softcap=4.0)
        plain = fx.cross_entropy_grad(x, target, axis=axis, reduction=reduction)
        assert (plain[row] == 0).all()
        assert (capped[row] == 0).all(), capped[row]
        assert (capped[(1, slice(None)) + index] == 0).all()
        # the other rows are finite, and as the float64 formula gives them
        others = np.ones(target.shape, bool)
        others[(0,) + index] = others[(1,) + index] = False
        moved = np.moveaxis(capped, 1, -1)[others]
        assert np.isfinite(moved).all()
        (_, with_grad) = fx.cross_entropy_with_grad(x, target, axis=axis, reduction=reduction, softcap=4.0)
        np.testing.assert_array_equal(with_grad, capped)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, np.nan, np.inf, "3", True, [3.0]])
def test_invalid_softcap(rng, bad):
    x = rng.standard_normal((4, 5))
    target = np.zeros(4, np.int64)
    for f in (fx.cross_entropy, fx.cross_entropy_grad, fx.cross_entropy_with_grad):
        with pytest.raises(ValueError, match="softcap"):
            f(x, target, softcap=bad)
    with pytest.raises(ValueError, match="softcap"):
        fx.CrossEntropyLoss(softcap=bad)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_against_torch(rng, shape, axis, reduction):
    torch = pytest.importorskip("torch")
    x, target, kwargs, class_axis = _problem(rng, shape, axis, dict(reduction=reduction, label_smoothing=0.1), np.float64)
    cap = 4.0
    t = torch.from_numpy(x).requires_grad_()
    capped = cap * torch.tanh(t / cap)
    if class_axis != 1 and capped.ndim > 1:
        capped = torch.movedim(capped, class_axis, 1)
    loss = torch.nn.functional.cross_entropy(capped, torch.from_numpy(target), reduction=reduction, label_smoothing=0.1)
    loss.backward(torch.ones_like(loss))
    got_loss, got_grad = fx.cross_entropy_with_grad(x, target, softcap=cap, **kwargs)
    np.testing.assert_allclose(got_loss, loss.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_grad, t.grad.numpy(), rtol=1e-12, atol=1e-14)
