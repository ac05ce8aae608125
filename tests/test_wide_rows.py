"""Few rows of very many classes, where each row is cut into chunks worked on in parallel: every
function and option against the float64 reference, in place, and independent of the thread count."""

import numpy as np
import pytest

import fastxent as fx
import reference as ref

SHAPES = [(3, 70_001), (1, 131_072)]


def logits(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[0, 5:1000] = -np.inf  # a masked span inside the first chunk
    return x


def tolerance(dtype):
    return dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family(rng, function, shape, dtype):
    x = logits(rng, shape, dtype)
    got = getattr(fx, function)(x, axis=1)
    expected = getattr(ref, function)(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


OPTIONS = [
    dict(),
    dict(label_smoothing=0.1, weight=True),
    dict(reduction="none", ignore_index=0),
    dict(reduction="sum", z_loss=1e-3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_and_gradient(rng, shape, options, dtype):
    x = logits(rng, shape, dtype)
    classes = shape[1]
    target = rng.integers(1000, classes, size=shape[0])
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = rng.uniform(0.5, 2.0, classes).astype(dtype)
    if "ignore_index" in kwargs:
        target[0] = 0
    z_loss = kwargs.pop("z_loss", 0.0)
    upcast = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    expected = ref.cross_entropy(x.astype(np.float64), target, **upcast)
    expected_grad = ref.cross_entropy_grad(x.astype(np.float64), target, **upcast)
    if z_loss:
        lse = ref.logsumexp(x.astype(np.float64), axis=1)
        expected = expected + z_loss * np.sum(lse**2)
        expected_grad = expected_grad + 2 * z_loss * lse[:, None] * ref.softmax(x.astype(np.float64), axis=1)
    loss, grad = fx.cross_entropy_with_grad(x, target, z_loss=z_loss, **kwargs)
    np.testing.assert_allclose(loss, expected, **tolerance(dtype))
    np.testing.assert_allclose(grad, expected_grad, **tolerance(dtype))
    crit = fx.CrossEntropyLoss(z_loss=z_loss, **kwargs)
    np.testing.assert_allclose(crit(x, target), loss, rtol=1e-15)
    np.testing.assert_array_equal(crit.backward(), grad)
    # In place: the gradient written over the logits.
    in_place = x.copy()
    _, again = fx.cross_entropy_with_grad(in_place, target, z_loss=z_loss, out=in_place, **kwargs)
    assert again is in_place
    np.testing.assert_array_equal(in_place, grad)


def test_probability_targets(rng):
    x = logits(rng, (2, 80_000), np.float64)
    y = rng.random(x.shape)
    y /= y.sum(axis=1, keepdims=True)
    y[0, 5:1000] = 0.0  # no mass on the masked logits
    loss, grad = fx.cross_entropy_with_grad(x, y, label_smoothing=0.0)
    np.testing.assert_allclose(loss, ref.cross_entropy(x, y), rtol=1e-12)
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(x, y), rtol=1e-12, atol=1e-16)


@pytest.mark.usefixtures("restore_num_threads")
def test_results_do_not_depend_on_threads(rng):
    x = logits(rng, (4, 100_000), np.float32)
    target = rng.integers(1000, 100_000, size=4)
    results = []
    for threads in (1, 2, 3):
        fx.set_num_threads(threads)
        results.append((fx.cross_entropy_with_grad(x, target), fx.log_softmax(x), fx.logsumexp(x)))
    for (loss, grad), lsm, lse in results[1:]:
        (loss0, grad0), lsm0, lse0 = results[0]
        assert loss == loss0
        np.testing.assert_array_equal(grad, grad0)
        np.testing.assert_array_equal(lsm, lsm0)
        np.testing.assert_array_equal(lse, lse0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_chunks_masked_or_nan(dtype):
    """Each chunk of a split row is summed against its own max: a chunk of nothing but -inf adds 0,
    one of nothing but NaN makes its row NaN (the gradient of a masked chunk in it too), and a row of
    -inf only is NaN (as in the reference)."""
    x = np.tile(np.linspace(-3.0, 5.0, 70_001), (4, 1)).astype(dtype)
    x[0, :16384] = -np.inf  # the first chunk entirely masked
    x[1, 16384:32768] = -np.inf  # a middle chunk masked
    x[1, -5:] = -np.inf  # and the end of the last one
    x[2, 32768:49152] = np.nan  # a chunk of NaN
    x[2, 49152:65536] = -np.inf  # and one masked: its gradient is NaN too
    x[3, :] = -np.inf
    target = np.array([20_000, 40_000, 100, 7])
    expected_lse = ref.logsumexp(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(fx.logsumexp(x, axis=1), expected_lse, **tolerance(dtype))
    np.testing.assert_allclose(
        fx.log_softmax(x, axis=1), ref.log_softmax(x.astype(np.float64), axis=1), **tolerance(dtype)
    )
    probabilities = fx.softmax(x, axis=1)
    np.testing.assert_allclose(probabilities, ref.softmax(x.astype(np.float64), axis=1), **tolerance(dtype))
    assert (probabilities[0, :16384] == 0).all() and np.isnan(probabilities[2:]).all()
    loss, grad = fx.cross_entropy_with_grad(x, target, reduction="none")
    expected = ref.cross_entropy(x.astype(np.float64), target, reduction="none")
    np.testing.assert_allclose(loss, expected, **tolerance(dtype))
    assert np.isfinite(loss[:2]).all() and np.isnan(loss[2:]).all()
    np.testing.assert_allclose(
        grad, ref.cross_entropy_grad(x.astype(np.float64), target, reduction="none"), **tolerance(dtype)
    )
    np.testing.assert_allclose(fx.cross_entropy(x, target, reduction="none"), expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunks_far_below_their_row_max(rng, dtype):
    """A split row's gradient and softmax are taken from each chunk's exponentials against the
    chunk's own max, scaled to the row's afterwards: a chunk far below the row's max (probabilities
    near 1e-28) keeps the relative accuracy of every element, in the fused gradient, the loss
    class's, in place, and in the softmax."""
    x = rng.standard_normal((3, 70_001)).astype(dtype)
    x[0, 16_384:32_768] -= 60.0  # the second chunk
    x[1, 49_152:] -= 60.0  # the last chunk
    x[2, :16_384] += 60.0  # every chunk but the first far below the max
    target = np.array([20_000, 60_000, 100])
    expected = ref.cross_entropy_grad(x.astype(np.float64), target)
    assert expected[expected != 0].min() < 1e-29 and (expected != 0).all()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    _, grad = fx.cross_entropy_with_grad(x, target)
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=0)
    crit = fx.CrossEntropyLoss()
    crit(x, target)
    np.testing.assert_array_equal(crit.backward(), grad)
    in_place = x.copy()
    fx.cross_entropy_with_grad(in_place, target, out=in_place)
    np.testing.assert_array_equal(in_place, grad)
    probabilities = ref.softmax(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(fx.softmax(x, axis=1), probabilities, rtol=rtol, atol=0)
