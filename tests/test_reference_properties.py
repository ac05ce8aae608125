"""Properties of the float64 reference that hold without torch: its closed-form
gradient is the derivative of its loss, and its pieces fit together."""

from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from cases import Layout, Options, make_index_target, make_logits, make_probability_target


def numerical_gradient(f, x, step=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (f(up) - f(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("layout", [Layout((4, 5), None), Layout((2, 5, 3), None), Layout((3, 2, 5), -1)])
def test_gradient_is_the_derivative_of_the_loss(rng, layout, probabilities, reduction):
    x = make_logits(rng, layout.shape)
    if probabilities:
        target = make_probability_target(rng, layout)
    else:
        target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    kwargs = dict(weight=rng.uniform(0.5, 2.0, 5), axis=layout.axis, reduction=reduction, label_smoothing=0.2)
    numerical = numerical_gradient(lambda z: float(ref.cross_entropy(z, target, **kwargs)), x)
    np.testing.assert_allclose(
        ref.cross_entropy_grad(x, target, grad_output=1.0, **kwargs), numerical, atol=1e-8
    )


def test_per_sample_grad_output_weights_each_row(rng):
    layout = Layout((4, 6), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout)
    g = rng.uniform(-1, 1, 4)
    numerical = numerical_gradient(
        lambda z: float(np.sum(g * ref.cross_entropy(z, target, reduction="none"))), x
    )
    np.testing.assert_allclose(
        ref.cross_entropy_grad(x, target, reduction="none", grad_output=g), numerical, atol=1e-8
    )


def test_pieces_fit_together(rng):
    x = make_logits(rng, (6, 7))
    target = rng.integers(0, 7, 6)
    np.testing.assert_allclose(np.exp(ref.log_softmax(x)), ref.softmax(x), rtol=1e-14)
    np.testing.assert_allclose(x - ref.logsumexp(x)[:, None], ref.log_softmax(x), rtol=1e-14)
    np.testing.assert_allclose(
        ref.nll_loss(ref.log_softmax(x), target, reduction="none"),
        ref.cross_entropy(x, target, reduction="none"),
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        ref.cross_entropy(x, np.eye(7)[target]), ref.cross_entropy(x, target), rtol=1e-14
    )


def test_empty_and_fully_ignored_rules():
    x = np.zeros((3, 4))
    ignored = np.full(3, -100)
    assert np.isnan(ref.cross_entropy(x, ignored))
    assert ref.cross_entropy(x, ignored, reduction="sum") == 0
    assert np.all(ref.cross_entropy_grad(x, ignored) == 0)
    assert np.isnan(ref.cross_entropy(np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
    assert np.all(ref.logsumexp(np.zeros((2, 0))) == -np.inf)
