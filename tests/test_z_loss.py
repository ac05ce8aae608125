"""The z-loss option: z_loss * logsumexp(row)**2 of every kept row, reduced like the main loss, with
its exact gradient; checked against a float64 NumPy formula, finite differences and torch."""

import numpy as np
import pytest

import fastxent as fx

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

import reference as ref


def z_reference(x, target, weight=None, *, axis=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0, z_loss=0.0):
    """(total loss, z part) in float64, from SPEC's cross-entropy plus the z-loss definition."""
    x = np.asarray(x, np.float64)
    ce = ref.cross_entropy(x, target, weight, axis=axis, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    class_axis = (0 if x.ndim == 1 else 1) if axis is None else axis % x.ndim
    lse = ref.logsumexp(x, axis=class_axis)
    target = np.asarray(target)
    index = target.dtype.kind in "iu"
    kept = (target != ignore_index) if index else np.ones(lse.shape, bool)
    z_rows = np.where(kept, z_loss * lse**2, 0.0)
    if reduction == "none":
        return ce + z_rows, z_rows
    if reduction == "sum":
        return ce + z_rows.sum(), z_rows.sum()
    if index:
        w = np.ones(x.shape[class_axis]) if weight is None else np.asarray(weight, np.float64)
        denominator = np.where(kept, w[np.where(kept, target, 0)], 0.0).sum()
    else:
        denominator = lse.size
    return ce + z_rows.sum() / denominator, z_rows.sum() / denominator


CASES = [
    dict(shape=(16, 7), axis=None),
    dict(shape=(300, 5), axis=None),  # few classes: the transposed tiles
    dict(shape=(9, 40), axis=None),
    dict(shape=(4, 6, 33), axis=1),  # class axis not last: tiles across rows
    dict(shape=(3, 5, 11), axis=-1),
]
OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.2, weight=True, ignore_index=1),
]


def make(rng, shape, axis, options, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    class_axis = (0 if len(shape) == 1 else 1) if axis is None else axis % len(shape)
    classes = shape[class_axis]
    row_shape = shape[:class_axis] + shape[class_axis + 1:]
    target = rng.integers(0, classes, size=row_shape)
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = rng.uniform(0.5, 2.0, classes).astype(dtype)
    return x, target, kwargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["shape"]))
def test_value_and_gradient_against_float64(rng, case, options, dtype):
    x, target, kwargs = make(rng, case["shape"], case["axis"], options, dtype)
    kwargs.update(axis=case["axis"], z_loss=1e-2)
    expected_loss, expected_z = z_reference(x, target, **kwargs)
    (loss, z_part), grad = fx.cross_entropy_with_grad(x, target, return_z_loss=True, **kwargs)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(loss, expected_loss, **tolerance)
    np.testing.assert_allclose(z_part, expected_z, **tolerance)
    assert np.asarray(loss).dtype == dtype
    # The loss alone, and the gradient alone, agree with the fused call.
    np.testing.assert_allclose(fx.cross_entropy(x, target, **kwargs), loss, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(fx.cross_entropy_grad(x, target, **kwargs), grad, rtol=1e-6, atol=1e-7)
    if dtype == np.float64:
        # Central differences of the float64 reference, on a few coordinates.
        scalar = (lambda v: np.sum(z_reference(v, target, **kwargs)[0]))
        flat = x.reshape(-1)
        for position in rng.choice(flat.size, size=5, replace=False):
            step = 1e-6
            plus, minus = flat.copy(), flat.copy()
            plus[position] += step
            minus[position] -= step
            numeric = (scalar(plus.reshape(x.shape)) - scalar(minus.reshape(x.shape))) / (2 * step)
            # The difference quotient's rounding noise is about |loss| * 1e-16 / step.
            noise = 1e-16 * abs(scalar(x)) / step
            np.testing.assert_allclose(grad.reshape(-1)[position], numeric, rtol=1e-5, atol=100 * noise + 1e-9)


def test_zero_z_loss_changes_nothing(rng):
    x = rng.standard_normal((8, 5))
    target = rng.integers(0, 5, 8)
    loss, z_part = fx.cross_entropy(x, target, return_z_loss=True)
    assert loss == fx.cross_entropy(x, target)
    assert z_part == 0.0
    np.testing.assert_array_equal(fx.cross_entropy_grad(x, target, z_loss=0.0), fx.cross_entropy_grad(x, target))


def test_probability_targets(rng):
    x = rng.standard_normal((6, 4))
    y = rng.random((6, 4))
    y /= y.sum(axis=1, keepdims=True)
    expected_loss, expected_z = z_reference(x, y, z_loss=0.5)
    (loss, z_part), grad = fx.cross_entropy_with_grad(x, y, z_loss=0.5, return_z_loss=True)
    np.testing.assert_allclose([loss, z_part], [expected_loss, expected_z], rtol=1e-12)
    lse = ref.logsumexp(x, axis=1)
    p = ref.softmax(x, axis=1)
    z_grad = 2 * 0.5 * lse[:, None] * p / x.shape[0]
    np.testing.assert_allclose(grad - fx.cross_entropy_grad(x, y), z_grad, rtol=1e-9, atol=1e-14)


LOW_PRECISION = ["float16"] + (["bfloat16"] if ml_dtypes is not None else [])


@pytest.mark.parametrize("dtype", ["float32", "float64"] + LOW_PRECISION)
@pytest.mark.parametrize("layout", ["rows", "few classes", "inner axis", "capped"])
def test_the_z_part_of_rows_with_infinities_is_logsumexps(dtype, layout):
    """A row whose max is infinite: its z part is z_loss * logsumexp(row)**2 all the same, +inf for a
    +inf logit or a row of -inf (whose statistics alone hold inf - inf), NaN where the row holds a NaN."""
    inf, nan = np.inf, np.nan
    rows = np.array([[0.0, inf, 1.0, 0.5], [-inf] * 4, [0.5, 1.0, 2.0, -1.0], [nan, inf, 0.0, 1.0],
                     [-inf, -inf, 2.0, -inf], [nan, -inf, -inf, -inf]])
    dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rows = rows.astype(dtype)
    target = np.array([0, 1, 2, 3, 2, 0])
    x, axis = rows, None
    if layout == "few classes":  # the transposed tiles: many rows of few classes
        x, target = np.tile(rows, (50, 1)), np.tile(target, 50)
    elif layout == "inner axis":  # classes along axis 1, rows along the inner axis
        x, axis = np.ascontiguousarray(rows.T[None]), 1
        target = target[None]
    options = dict(z_loss=0.25, return_z_loss=True, axis=axis)
    if layout == "capped":
        options["softcap"] = 5.0
    _, z_rows = fx.cross_entropy(x, target, reduction="none", **options)
    lse_axis = -1 if axis is None else axis
    capped_lse_rows = None
    if layout == "capped":  # the capped logits are finite: a NaN row alone is NaN
        capped = 5.0 * np.tanh(rows.astype(np.float64) / 5.0)
        capped_lse_rows = ref.logsumexp(capped, axis=1)
    expected = 0.25 * fx.logsumexp(x, axis=lse_axis).astype(np.float64) ** 2
    if capped_lse_rows is not None:
        expected = 0.25 * capped_lse_rows ** 2
    got = np.asarray(z_rows, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (got, expected)
    assert np.array_equal(got[np.isinf(expected)], expected[np.isinf(expected)]), (got, expected)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-2 if dtype.itemsize == 2 else 1e-6)
    if layout == "rows":
        assert np.isinf(got[[0, 1]]).all() and np.isnan(got[[3, 5]]).all()
    # the reduced z part adds the same rows
    _, z_sum = fx.cross_entropy(x, target, reduction="sum", **options)
    assert np.isnan(z_sum) if np.isnan(expected).any() else z_sum == np.inf


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_class_backward(rng, reduction):
    x = rng.standard_normal((10, 6))
    target = rng.integers(0, 6, 10)
    target[3] = -100
    crit = fx.CrossEntropyLoss(reduction=reduction, z_loss=1e-3, return_z_loss=True)
    loss, z_part = crit(x, target)
    expected_loss, expected_z = z_reference(x, target, reduction=reduction, z_loss=1e-3)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    np.testing.assert_allclose(z_part, expected_z, rtol=1e-12, atol=1e-300)
    grad_output = np.arange(10.0) if reduction == "none" else 2.0
    np.testing.assert_allclose(
        crit.backward(grad_output),
        fx.cross_entropy_grad(x, target, reduction=reduction, z_loss=1e-3, grad_output=grad_output),
        rtol=1e-12,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_dimensional_input_gives_zero_dimensional_arrays(dtype):
    """reduction="none" of a (C,) input is a 0-d array with or without the z-loss, in every entry point."""
    x = np.array([1.0, 2.0, 3.0], dtype)
    expected, z_expected = z_reference(x, 1, reduction="none", z_loss=0.1)
    results = [
        fx.cross_entropy(x, 1, reduction="none", z_loss=0.1, return_z_loss=True),
        fx.cross_entropy_with_grad(x, 1, reduction="none", z_loss=0.1, return_z_loss=True)[0],
        fx.CrossEntropyLoss(reduction="none", z_loss=0.1, return_z_loss=True)(x, 1),
    ]
    for loss, z_part in results:
        for got, want in [(loss, expected), (z_part, z_expected)]:
            assert type(got) is np.ndarray and got.shape == () and got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert type(fx.cross_entropy(x, 1, reduction="none", z_loss=0.1)) is np.ndarray


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x", None])
def test_bad_z_loss(bad):
    with pytest.raises(ValueError, match="z_loss"):
        fx.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), z_loss=bad)


def test_return_z_loss_must_be_a_bool():
    with pytest.raises(TypeError, match="return_z_loss"):
        fx.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), return_z_loss="yes")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((12, 9)) * 2).astype(dtype)
    target = rng.integers(0, 9, 12)
    target[[2, 7]] = -100
    weight = rng.uniform(0.5, 2, 9).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(target)
    wt = torch.tensor(weight)
    ce = torch.nn.functional.cross_entropy(xt, tt, wt, label_smoothing=0.1)
    kept = tt != -100
    denominator = wt[tt[kept]].sum()
    z = 1e-2 * (torch.logsumexp(xt, dim=1)[kept] ** 2).sum() / denominator
    (ce + z).backward()
    (loss, z_part), grad = fx.cross_entropy_with_grad(x, target, weight, label_smoothing=0.1, z_loss=1e-2,
                                                      return_z_loss=True)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, (ce + z).item(), **tolerance)
    np.testing.assert_allclose(z_part, z.item(), **tolerance)
    np.testing.assert_allclose(grad, xt.grad.numpy(), **tolerance)
