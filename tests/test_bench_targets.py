"""bench/run.py's table of targets: which rows each target reads, and when it counts as met."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

_RUN = pathlib.Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", _RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(op, shape, threads, fastxent_ms, torch_ms, jax_ms=None, read_gbps=None, copy_gbps=None):
    dims = [int(d) for d in shape.split("x")]
    nbytes = 4
    for d in dims:
        nbytes *= d
    results = {"fastxent": {"ms": fastxent_ms}, "torch": {"ms": torch_ms}}
    if jax_ms is not None:
        results["jax"] = {"ms": jax_ms}
    return {"op": op, "shape": shape, "input_shape": dims, "axis": 1, "threads": threads, "nbytes": nbytes,
            "results": results, "yardstick": {"read_gbps": read_gbps, "copy_gbps": copy_gbps}}


def by_shape(rows):
    return {(target, shape): (needed, reached, met) for target, shape, needed, reached, met in rows}


def test_speed_ups_are_read_at_the_most_threads_with_the_small_class_log_softmax_target(run):
    data = {"machine": {"l3_cache_bytes": None}, "rows": [
        row("cross_entropy_mean", "4x256000", 1, 1.0, 10.0),       # one thread: not a target row
        row("cross_entropy_mean", "4x256000", 2, 1.0, 5.9),
        row("cross_entropy_mean", "32x10", 2, 1.0, 2.0),            # exactly the target: met
        row("log_softmax", "1048576x10", 2, 1.0, 4.9),              # 10 classes: needs 5x
        row("log_softmax", "4096x1000", 2, 1.0, 1.6),               # needs 1.5x
        row("log_softmax", "256x100", 2, 1.0, 1.0),                 # 102 kB: no target
        row("cross_entropy_none", "1048576x10", 2, 1.0, 1.0),       # no target for this op
    ]}
    rows, threads = run.target_rows(data)
    assert threads == 2
    got = by_shape(rows)
    assert got[("`cross_entropy_mean` vs torch", "4x256000")] == ("6x", pytest.approx(5.9), False)
    assert got[("`cross_entropy_mean` vs torch", "32x10")][2]
    assert got[("`log_softmax` vs torch", "1048576x10")] == ("5x", pytest.approx(4.9), False)
    assert got[("`log_softmax` vs torch", "4096x1000")] == ("1.5x", pytest.approx(1.6), True)
    assert len(rows) == 4


def test_the_machine_targets_hold_for_arrays_larger_than_the_l3_cache(run):
    shape = "2048x32000"  # 262 MB
    nbytes = 2048 * 32000 * 4
    read_ms = nbytes / 100e9 * 1e3
    copy_ms = 2 * nbytes / 50e9 * 1e3
    data = {"machine": {"l3_cache_bytes": 32 * 2**20}, "rows": [
        row("cross_entropy_mean", shape, 2, 1.9 * read_ms, 100.0, read_gbps=100.0, copy_gbps=50.0),
        row("cross_entropy_with_grad", shape, 2, 2.1 * copy_ms, 100.0, read_gbps=100.0, copy_gbps=50.0),
        row("cross_entropy_mean", "4096x1000", 2, 100.0, 500.0, read_gbps=100.0, copy_gbps=50.0),  # 16 MB
    ]}
    got = by_shape(run.target_rows(data)[0])
    assert got[("`cross_entropy_mean` time / one read", shape)][1:] == (pytest.approx(1.9), True)
    assert got[("`cross_entropy_with_grad` time / one copy", shape)][1:] == (pytest.approx(2.1), False)
    assert not any(target.endswith("one read") and s == "4096x1000" for target, s in got)
    data["machine"]["l3_cache_bytes"] = None  # unknown cache size: no machine targets
    assert not any("time /" in target for target, _ in by_shape(run.target_rows(data)[0]))


def test_jax_is_one_target_over_every_row_and_thread_count_its_least_speed_up(run):
    data = {"machine": {"l3_cache_bytes": None}, "rows": [
        row("cross_entropy_mean", "32x10", 1, 1.0, 3.0, jax_ms=0.9),   # slower than JAX at one thread
        row("cross_entropy_mean", "32x10", 2, 1.0, 3.0, jax_ms=5.0),
    ]}
    rows, _ = run.target_rows(data)
    (jax,) = [r for r in rows if "JAX" in r[0]]
    assert jax[3] == pytest.approx(0.9) and not jax[4] and "1 thread" in jax[1]
    report = "\n".join(run.targets_report(data))
    assert "| **no** |" in report and "1 of 2 met" in report
