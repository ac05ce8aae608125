"""The choice of instruction set at import: FASTXENT_ISA forces one, a bad value fails the import
with a message naming the choices, and every supported instruction set gives the same results
(NaN and infinities in the same places, values within SPEC's tolerance). Each case runs in a child
process, since the choice is made once per process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent as fx

ALL_ISAS = ["baseline", "avx2", "avx512"]


def supported_isas() -> list:
    names = fx.cpu_info()["supported_isas"]
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name.strip()]


def run_child(code: str, isa, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FASTXENT_ISA", None)
    if isa is not None:
        env["FASTXENT_ISA"] = isa
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True, text=True, timeout=300
    )


CPU_INFO = """
    import json
    import fastxent
    print(json.dumps(fastxent.cpu_info()))
"""


@pytest.mark.parametrize("value", ["bogus", "AVX2", "sse9", "baseline,avx2"])
def test_unknown_isa_fails_the_import_naming_the_choices(value):
    result = run_child(CPU_INFO, value)
    assert result.returncode != 0
    assert "ImportError" in result.stderr, result.stderr
    assert f"FASTXENT_ISA={value}" in result.stderr, result.stderr
    message = result.stderr.split("ImportError", 1)[1]
    # every instruction set of the build (all three on x86-64), and those this CPU supports
    built = ALL_ISAS if platform.machine().lower() in ("x86_64", "amd64") else ["baseline"]
    choices, supported = message.split("choose from:", 1)[1].split("; this CPU supports", 1)
    assert [name.strip() for name in choices.split(",")] == built, message
    assert [name.strip(" )\n") for name in supported.split(",")] == supported_isas(), message


def test_isa_this_cpu_lacks_fails_the_import():
    missing = [name for name in ALL_ISAS if name not in supported_isas()]
    if not missing:
        pytest.skip("this CPU supports every instruction set")
    result = run_child(CPU_INFO, missing[-1])
    assert result.returncode != 0
    assert "ImportError" in result.stderr and missing[-1] in result.stderr, result.stderr


@pytest.mark.parametrize("isa", ["baseline"] + [name for name in supported_isas() if name != "baseline"])
def test_forced_isa_is_the_one_in_use(isa):
    result = run_child(CPU_INFO, isa)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["isa"] == isa


def test_empty_setting_chooses_the_best_supported():
    result = run_child(CPU_INFO, "")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["isa"] == supported_isas()[-1]
    assert fx.cpu_info()["isa"] in supported_isas()


COMPUTE = """
    import sys
    import numpy as np
    import fastxent as fx

    data = dict(np.load(sys.argv[1]))
    out = {"isa": np.array(fx.cpu_info()["isa"])}
    for dtype in ("float32", "float64"):
        for name in ("rows", "wide", "strided", "special"):
            x = data[name].astype(dtype)
            axis = 1
            t = data[name + "_target"]
            y = data[name + "_y"].astype(dtype)
            w = data[name + "_w"].astype(dtype)
            key = f"{dtype}-{name}"
            out[key + "-log_softmax"] = fx.log_softmax(x, axis=axis)
            out[key + "-softmax"] = fx.softmax(x, axis=axis)
            out[key + "-logsumexp"] = fx.logsumexp(x, axis=axis)
            for reduction in ("none", "mean", "sum"):
                for kind, target in (("index", t), ("probability", y)):
                    loss, grad = fx.cross_entropy_with_grad(
                        x, target, w, reduction=reduction, label_smoothing=0.1
                    )
                    out[f"{key}-{kind}-{reduction}-loss"] = np.asarray(loss)
                    out[f"{key}-{kind}-{reduction}-grad"] = grad
            out[key + "-nll"] = fx.nll_loss(x, t, w, reduction="none")
    np.savez(sys.argv[2], **out)
"""


def dispatch_inputs(path):
    rng = np.random.default_rng(77)
    data = {}
    shapes = {"rows": (300, 37), "wide": (5, 1000), "strided": (6, 37, 131), "special": (200, 19)}
    for name, shape in shapes.items():
        x = 3.0 * rng.standard_normal(shape)
        if name == "special":
            pick = rng.random(shape)
            x[pick < 0.05] = -np.inf
            x[(pick >= 0.05) & (pick < 0.07)] = np.inf
            x[(pick >= 0.07) & (pick < 0.09)] = np.nan
            x[(pick >= 0.09) & (pick < 0.12)] = 1e30
            x[5] = -np.inf
        classes = shape[1]
        row_shape = shape[:1] + shape[2:]
        target = rng.integers(0, classes, row_shape)
        target.flat[::7] = -100
        y = rng.dirichlet(np.ones(classes), size=row_shape)
        data[name] = x
        data[name + "_target"] = target
        data[name + "_y"] = np.moveaxis(y, -1, 1)
        data[name + "_w"] = rng.uniform(0.25, 2.0, classes)
    np.savez(path, **data)


@pytest.fixture(scope="module")
def results_per_isa(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dispatch")
    inputs = folder / "inputs.npz"
    dispatch_inputs(inputs)
    results = {}
    for isa in supported_isas():
        output = folder / f"{isa}.npz"
        result = run_child(COMPUTE, isa, str(inputs), str(output))
        assert result.returncode == 0, result.stderr
        results[isa] = dict(np.load(output))
        assert str(results[isa].pop("isa")) == isa
    return results


TOLERANCE = {"float32": dict(rtol=2e-6, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


def test_every_supported_isa_agrees_with_baseline(results_per_isa):
    if len(results_per_isa) < 2:
        pytest.skip("only one instruction set on this CPU")
    baseline = results_per_isa["baseline"]
    for isa, results in results_per_isa.items():
        assert results.keys() == baseline.keys()
        for key, expected in baseline.items():
            got = results[key]
            assert got.dtype == expected.dtype and got.shape == expected.shape, f"{isa} {key}"
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{isa} {key}: NaN")
            np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected), err_msg=f"{isa} {key}: +inf")
            np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected), err_msg=f"{isa} {key}: -inf")
            tolerance = TOLERANCE[key.split("-")[0]]
            if key.endswith("-sum-loss"):
                tolerance = dict(tolerance, atol=tolerance["atol"] * 2000)
            np.testing.assert_allclose(got, expected, equal_nan=True, err_msg=f"{isa} {key}", **tolerance)
