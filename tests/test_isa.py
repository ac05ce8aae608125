"""Every instruction set this CPU supports gives SPEC's results, not only the one
chosen by default. Each runs in a child process with ``FASTXENT_ISA`` set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent as fx
import reference as ref
from cases import FLOAT_DTYPES, Layout, Options, assert_close, make_index_target, make_logits, make_weight

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastxent as fx

    data = dict(np.load(sys.argv[1]))
    x, masked, target, y, weight = (data[k] for k in ("x", "masked", "target", "y", "weight"))
    results = {"isa": np.array(fx.cpu_info()["isa"])}
    for axis in (1, -1):
        results[f"log_softmax{axis}"] = fx.log_softmax(masked, axis=axis)
        results[f"softmax{axis}"] = fx.softmax(masked, axis=axis)
        results[f"logsumexp{axis}"] = fx.logsumexp(masked, axis=axis)
    for reduction in ("none", "sum", "mean"):
        for kind, t in (("index", target), ("probability", y)):
            loss, grad = fx.cross_entropy_with_grad(x, t, weight, reduction=reduction, label_smoothing=0.1)
            results[f"loss-{kind}-{reduction}"] = np.asarray(loss)
            results[f"grad-{kind}-{reduction}"] = grad
    np.savez(sys.argv[2], **results)
    """)


def supported_isas() -> list:
    names = fx.cpu_info().get("supported_isas")
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name.strip()]


@pytest.mark.skipif(not supported_isas(), reason="cpu_info() lists no supported_isas")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("isa", supported_isas())
def test_every_supported_isa_matches_the_reference(tmp_path, rng, isa, dtype):
    layout = Layout((300, 37, 5), None)
    x = make_logits(rng, layout.shape, dtype)
    masked = x.copy()
    masked[rng.random(layout.shape) < 0.2] = -np.inf
    target = make_index_target(rng, layout, Options(ignore_some_rows=True))
    y = ref.softmax(rng.standard_normal(layout.shape), axis=1).astype(dtype)
    weight = make_weight(rng, 37, dtype)
    np.savez(tmp_path / "inputs.npz", x=x, masked=masked, target=target, y=y, weight=weight)

    env = dict(os.environ, FASTXENT_ISA=isa)
    subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "inputs.npz"), str(tmp_path / "results.npz")],
        env=env,
        check=True,
    )
    results = np.load(tmp_path / "results.npz")
    assert str(results["isa"]) == isa

    for axis in (1, -1):
        m64 = masked.astype(np.float64)
        assert_close(results[f"log_softmax{axis}"], ref.log_softmax(m64, axis=axis), dtype)
        assert_close(results[f"softmax{axis}"], ref.softmax(m64, axis=axis), dtype)
        assert_close(results[f"logsumexp{axis}"], ref.logsumexp(m64, axis=axis), dtype)
    x64 = x.astype(np.float64)
    for reduction in ("none", "sum", "mean"):
        for kind, t in (("index", target), ("probability", y.astype(np.float64))):
            kwargs = dict(reduction=reduction, label_smoothing=0.1)
            expected_loss = ref.cross_entropy(x64, t, weight.astype(np.float64), **kwargs)
            expected_grad = ref.cross_entropy_grad(x64, t, weight.astype(np.float64), **kwargs)
            terms = 1500 if reduction == "sum" else 1
            assert_close(results[f"loss-{kind}-{reduction}"], expected_loss, dtype, terms=terms)
            assert_close(results[f"grad-{kind}-{reduction}"], expected_grad, dtype)
