"""The float64 NumPy reference agrees with torch 2.13 in float64.

Everything else in the suite trusts ``reference``; this module is what earns
that trust. It does not need fastxent.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reference as ref  # noqa: E402
import torch_ref  # noqa: E402
from cases import (  # noqa: E402
    GRAD_MODES,
    INDEX_OPTIONS,
    LAYOUTS,
    OTHER_AXES,
    PROBABILITY_OPTIONS,
    REDUCTIONS,
    Layout,
    loss_kwargs,
    make_index_target,
    make_grad_output,
    make_logits,
    make_probability_target,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)


def assert_same(reference_value, torch_value):
    np.testing.assert_allclose(reference_value, torch_value, equal_nan=True, **TIGHT)
    assert np.shape(reference_value) == np.shape(torch_value)


@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", INDEX_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_index_targets_match_torch(rng, layout, options, reduction, per_sample):
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, np.float64)
    g = make_grad_output(rng, layout, per_sample)

    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(
        x, target, reduction=reduction, grad_output=g, **kwargs
    )
    assert_same(ref.cross_entropy(x, target, reduction=reduction, **kwargs), expected_loss)
    assert_same(
        ref.cross_entropy_grad(x, target, reduction=reduction, grad_output=g, **kwargs), expected_grad
    )


@pytest.mark.parametrize("reduction,per_sample", GRAD_MODES)
@pytest.mark.parametrize("options", PROBABILITY_OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_probability_targets_match_torch(rng, layout, options, reduction, per_sample):
    x = make_logits(rng, layout.shape)
    target = make_probability_target(rng, layout)
    kwargs = loss_kwargs(rng, layout, options, np.float64)
    g = make_grad_output(rng, layout, per_sample)

    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(
        x, target, reduction=reduction, grad_output=g, **kwargs
    )
    assert_same(ref.cross_entropy(x, target, reduction=reduction, **kwargs), expected_loss)
    assert_same(
        ref.cross_entropy_grad(x, target, reduction=reduction, grad_output=g, **kwargs), expected_grad
    )


@pytest.mark.parametrize("target_dtype", [np.int32, np.int16, np.uint8])
def test_narrow_integer_targets_mean_the_same_classes(rng, target_dtype):
    layout = Layout((9, 5), None)
    x = make_logits(rng, layout.shape)
    target = make_index_target(rng, layout, dtype=target_dtype)
    expected, _ = torch_ref.cross_entropy_with_grad(x, target.astype(np.int64), reduction="none")
    assert_same(ref.cross_entropy(x, target, reduction="none"), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_every_row_ignored(rng, reduction, weighted):
    x = make_logits(rng, (4, 6))
    target = np.full(4, -100)
    weight = rng.uniform(0.5, 2.0, 6) if weighted else None
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(
        x, target, weight, reduction=reduction, label_smoothing=0.1
    )
    loss = ref.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=0.1)
    assert_same(loss, expected_loss)
    assert {"mean": np.isnan(loss), "sum": loss == 0, "none": np.all(loss == 0)}[reduction]
    grad = ref.cross_entropy_grad(x, target, weight, reduction=reduction, label_smoothing=0.1)
    assert_same(grad, expected_grad)
    assert np.all(grad == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True], ids=["index", "probability"])
def test_empty_batch(rng, reduction, probabilities):
    x = np.zeros((0, 5))
    target = np.zeros((0, 5)) if probabilities else np.zeros(0, dtype=np.int64)
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(x, target, reduction=reduction)
    assert_same(ref.cross_entropy(x, target, reduction=reduction), expected_loss)
    assert_same(ref.cross_entropy_grad(x, target, reduction=reduction), expected_grad)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_logits(rng, reduction, label_smoothing):
    x = make_logits(rng, (6, 8))
    x[:, 5:] = -np.inf
    target = rng.integers(0, 5, 6)
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(
        x, target, reduction=reduction, label_smoothing=label_smoothing
    )
    assert_same(
        ref.cross_entropy(x, target, reduction=reduction, label_smoothing=label_smoothing), expected_loss
    )
    assert_same(
        ref.cross_entropy_grad(x, target, reduction=reduction, label_smoothing=label_smoothing), expected_grad
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_logits_and_single_class(rng, reduction):
    x = rng.choice([-1e4, 1e4], size=(5, 7)) + rng.standard_normal((5, 7))
    target = rng.integers(0, 7, 5)
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(x, target, reduction=reduction)
    assert_same(ref.cross_entropy(x, target, reduction=reduction), expected_loss)
    assert_same(ref.cross_entropy_grad(x, target, reduction=reduction), expected_grad)

    single = make_logits(rng, (5, 1))
    zeros = np.zeros(5, dtype=np.int64)
    expected_loss, expected_grad = torch_ref.cross_entropy_with_grad(single, zeros, reduction=reduction)
    assert_same(ref.cross_entropy(single, zeros, reduction=reduction), expected_loss)
    assert_same(ref.cross_entropy_grad(single, zeros, reduction=reduction), expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [o for o in INDEX_OPTIONS if o.values[0].label_smoothing == 0])
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_nll_loss_matches_torch(rng, layout, options, reduction):
    log_probs = ref.log_softmax(make_logits(rng, layout.shape), axis=layout.class_axis)
    target = make_index_target(rng, layout, options)
    kwargs = loss_kwargs(rng, layout, options, np.float64)
    del kwargs["label_smoothing"]
    expected = torch_ref.nll_loss(log_probs, target, reduction=reduction, **kwargs)
    assert_same(ref.nll_loss(log_probs, target, reduction=reduction, **kwargs), expected)


def special_rows(width: int) -> np.ndarray:
    """Rows with -inf, +inf and NaN in them, plus an ordinary one."""
    rows = np.tile(np.linspace(-2.0, 3.0, width), (6, 1))
    rows[0, :] = -np.inf
    rows[1, 1] = -np.inf
    rows[2, 2] = np.inf
    rows[3, 0] = np.nan
    rows[4, ::2] = -np.inf
    return rows


@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
@pytest.mark.parametrize("layout", LAYOUTS + OTHER_AXES)
def test_softmax_family_matches_torch(rng, function, layout):
    x = make_logits(rng, layout.shape)
    axis = layout.class_axis
    assert_same(getattr(ref, function)(x, axis=axis), getattr(torch_ref, function)(x, axis=axis))


@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
def test_softmax_family_infinities_and_nan(function):
    x = special_rows(5)
    got = getattr(ref, function)(x, axis=1)
    assert_same(got, getattr(torch_ref, function)(x, axis=1))
    if function == "logsumexp":
        assert got[0] == -np.inf and got[2] == np.inf and np.isnan(got[3])
    if function == "log_softmax":
        assert np.all(np.isnan(got[0])) and got[1, 1] == -np.inf and np.all(np.isfinite(got[5]))


@pytest.mark.parametrize("function", ["log_softmax", "softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", [((3, 0), 1), ((0, 4), 1), ((0, 4), 0)])
def test_softmax_family_empty(function, shape, axis):
    x = np.zeros(shape)
    got = getattr(ref, function)(x, axis=axis)
    assert_same(got, getattr(torch_ref, function)(x, axis=axis))


def test_smoothing_term_uses_all_weights_but_divides_by_target_weights():
    # SPEC's 'mean' rule, checked by hand on a 2-row problem.
    x = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    target = np.array([0, 2])
    w = np.array([2.0, 1.0, 0.5])
    e = 0.3
    lsm = ref.log_softmax(x)
    per_row = [(1 - e) * -w[t] * lsm[i, t] + (e / 3) * -np.sum(w * lsm[i]) for i, t in enumerate(target)]
    expected = sum(per_row) / (w[0] + w[2])
    got = ref.cross_entropy(x, target, w, label_smoothing=e)
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    np.testing.assert_allclose(
        got, torch_ref.cross_entropy_with_grad(x, target, w, label_smoothing=e)[0], rtol=1e-14
    )
