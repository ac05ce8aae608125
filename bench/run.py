#!/usr/bin/env python
"""Benchmark fastxent against PyTorch, JAX, NumPy and SciPy on the CPU.

    python bench/run.py                       # full run, thread counts 1 and all
    python bench/run.py --quick               # fewer repeats, NumPy skipped on the biggest shapes
    python bench/run.py --threads 1 --ops cross_entropy_with_grad --shapes 4096x1000
    python bench/run.py --plot-only bench/results/latest.json

Every thread count runs in child processes of its own (one for JAX, one for the others), started
with OMP_NUM_THREADS / XLA_FLAGS set and, below the machine's core count, pinned to that many
cores (sched_setaffinity), so that no library can use more threads than the others. Results go to <out>/<name>.json, <name>.md and
<name>.png; the Markdown table is also printed. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# name -> (input shape, class axis). Targets have the input's shape without the class axis.
SHAPES = {
    "32x10": ((32, 10), 1),
    "256x1000": ((256, 1000), 1),
    "4096x1000": ((4096, 1000), 1),
    "2048x32000": ((2048, 32000), 1),
    "256x128256": ((256, 128256), 1),
    "4x256000": ((4, 256000), 1),
    "1048576x10": ((1048576, 10), 1),
    "1048576x2": ((1048576, 2), 1),
    "65536x50": ((65536, 50), 1),
    "32768x100": ((32768, 100), 1),
    "16x21x128x128": ((16, 21, 128, 128), 1),
}

OPS = ["cross_entropy_mean", "cross_entropy_none", "cross_entropy_with_grad", "log_softmax"]
OP_ALIASES = {"cross_entropy": ["cross_entropy_mean", "cross_entropy_none"]}
OPPONENTS = ["torch", "jax", "numpy", "scipy"]

# Bytes of logits each op must move at least once: read the input, plus write a full-size
# result for the ops that return one (the per-row losses of "none" are negligible).
OP_TRAFFIC = {
    "cross_entropy_mean": 1,
    "cross_entropy_none": 1,
    "cross_entropy_with_grad": 2,
    "log_softmax": 2,
}

DTYPE = np.float32

# Largest absolute difference to the reference's float32 result that is not reported as a
# mismatch: the logits are a few units wide, log-probabilities reach about -20.
MISMATCH_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------
# Timing


class Timing:
    def __init__(self, seconds, calls, samples, spread):
        self.seconds = seconds  # median seconds per call
        self.calls = calls  # calls timed (after warm-up)
        self.samples = samples  # number of timed samples (each may batch several calls)
        self.spread = spread  # (min, max) seconds per call over the samples

    def as_dict(self):
        return {
            "ms": self.seconds * 1e3,
            "calls": self.calls,
            "samples": self.samples,
            "min_ms": self.spread[0] * 1e3,
            "max_ms": self.spread[1] * 1e3,
        }


def calibrate(fn):
    """Warm fn up and return (seconds of one call, calls per sample).

    Two warm-up calls: the first pays for compilation, caches and the page faults of fresh
    buffers; the second is the estimate. Calls faster than 1 ms are batched so that one
    sample lasts about 1 ms (the clock and the loop then cost nothing).
    """
    fn()
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    number = 1
    if warm < 1e-3:
        number = max(1, min(10000, int(math.ceil(1e-3 / max(warm, 1e-7)))))
    return warm, number


def measure_interleaved(fns, min_repeats=5, min_time=0.2, max_time=3.0, slow_call=0.5,
                        slow_repeats=3):
    """Median time of one call of each fn in the dict `fns` (name -> zero-argument callable).

    Each fn gets enough samples for `min_time` seconds, at least `min_repeats` of them, at
    most `max_time` seconds' worth; a call slower than `slow_call` seconds is only repeated
    `slow_repeats` times. The samples are taken in rounds, one per fn per round, so that a
    background load that comes and goes hits every library alike instead of whichever
    happened to run at that moment.
    """
    gc.collect()
    plan = {}
    for name, fn in fns.items():
        warm, number = calibrate(fn)
        per_sample = max(warm * number, 1e-7)
        if warm > slow_call:
            wanted = slow_repeats
        else:
            wanted = max(min_repeats, int(math.ceil(min_time / per_sample)))
            wanted = min(wanted, max(min_repeats, int(max_time / per_sample)), 1000)
        plan[name] = (number, wanted)
    samples = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            pending = [name for name in fns if len(samples[name]) < plan[name][1]]
            if not pending:
                break
            for name in pending:
                fn, number = fns[name], plan[name][0]
                a = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[name].append((time.perf_counter() - a) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(statistics.median(s), len(s) * plan[name][0], len(s), (min(s), max(s)))
            for name, s in samples.items()}


def measure(fn, **options):
    """Median time of one call of fn() (see measure_interleaved)."""
    return measure_interleaved({"fn": fn}, **options)["fn"]


# --------------------------------------------------------------------------------------------
# Reference implementations of the opponents


def numpy_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    z = x - m
    z -= np.log(np.exp(z).sum(axis=axis, keepdims=True))
    return z


def numpy_cross_entropy_none(x, t, axis):
    lsm = numpy_log_softmax(x, axis)
    return -np.take_along_axis(lsm, np.expand_dims(t, axis), axis=axis).squeeze(axis)


def numpy_cross_entropy_mean(x, t, axis):
    return numpy_cross_entropy_none(x, t, axis).mean()


def numpy_cross_entropy_with_grad(x, t, axis):
    """Mean loss and its gradient: one exp pass, softmax minus one-hot, divided by the count."""
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    ti = np.expand_dims(t, axis)
    picked = np.take_along_axis(x, ti, axis=axis) - m - np.log(s)
    count = t.size
    loss = -picked.sum() / count
    e /= s
    np.put_along_axis(e, ti, np.take_along_axis(e, ti, axis=axis) - 1, axis=axis)
    e *= x.dtype.type(1.0 / count)
    return loss, e


def scipy_cross_entropy_none(special, x, t, axis):
    lsm = special.log_softmax(x, axis=axis)
    return -np.take_along_axis(lsm, np.expand_dims(t, axis), axis=axis).squeeze(axis)


def build_cases(lib_name, lib, x, t, axis):
    """Zero-argument callables per op for one library; missing ops are left out.

    Inputs are converted to the library's own array type here, outside the timed call.
    Each callable returns its result as NumPy-convertible objects (for the accuracy check):
    a loss array/scalar, or (loss, grad) for the gradient op.
    """
    cases = {}
    if lib_name == "fastxent":
        fx = lib
        cases["cross_entropy_mean"] = lambda: fx.cross_entropy(x, t)
        cases["cross_entropy_none"] = lambda: fx.cross_entropy(x, t, reduction="none")
        cases["cross_entropy_with_grad"] = lambda: fx.cross_entropy_with_grad(x, t)
        cases["log_softmax"] = lambda: fx.log_softmax(x, axis=axis)
    elif lib_name == "fastxent_out":
        # The same calls writing into a preallocated array (out=): the difference to the
        # figures above is what allocating (and first touching) a fresh result costs.
        fx = lib
        result = np.empty_like(x)
        cases["cross_entropy_with_grad"] = lambda: fx.cross_entropy_with_grad(x, t, out=result)
        cases["log_softmax"] = lambda: fx.log_softmax(x, axis=axis, out=result)
    elif lib_name == "torch":
        torch = lib
        F = torch.nn.functional
        xt = torch.from_numpy(x)
        tt = torch.from_numpy(t)
        xg = torch.from_numpy(x.copy()).requires_grad_()

        def with_grad():
            xg.grad = None
            with torch.enable_grad():
                loss = F.cross_entropy(xg, tt)
                loss.backward()
            return loss.detach(), xg.grad

        cases["cross_entropy_mean"] = lambda: F.cross_entropy(xt, tt)
        cases["cross_entropy_none"] = lambda: F.cross_entropy(xt, tt, reduction="none")
        cases["cross_entropy_with_grad"] = with_grad
        cases["log_softmax"] = lambda: F.log_softmax(xt, dim=axis)
    elif lib_name == "jax":
        jax, jnp = lib
        xj = jax.block_until_ready(jnp.asarray(x))
        tj = jax.block_until_ready(jnp.asarray(t.astype(np.int32)))

        def picked(z, tgt):
            lsm = jax.nn.log_softmax(z, axis=axis)
            return jnp.take_along_axis(lsm, jnp.expand_dims(tgt, axis), axis=axis).squeeze(axis)

        def mean_loss(z, tgt):
            return -picked(z, tgt).mean()

        f_mean = jax.jit(mean_loss)
        f_none = jax.jit(lambda z, tgt: -picked(z, tgt))
        f_grad = jax.jit(jax.value_and_grad(mean_loss))
        f_lsm = jax.jit(lambda z: jax.nn.log_softmax(z, axis=axis))
        cases["cross_entropy_mean"] = lambda: jax.block_until_ready(f_mean(xj, tj))
        cases["cross_entropy_none"] = lambda: jax.block_until_ready(f_none(xj, tj))
        cases["cross_entropy_with_grad"] = lambda: jax.block_until_ready(f_grad(xj, tj))
        cases["log_softmax"] = lambda: jax.block_until_ready(f_lsm(xj))
    elif lib_name == "numpy":
        cases["cross_entropy_mean"] = lambda: numpy_cross_entropy_mean(x, t, axis)
        cases["cross_entropy_none"] = lambda: numpy_cross_entropy_none(x, t, axis)
        cases["cross_entropy_with_grad"] = lambda: numpy_cross_entropy_with_grad(x, t, axis)
        cases["log_softmax"] = lambda: numpy_log_softmax(x, axis)
    elif lib_name == "scipy":
        special = lib
        cases["cross_entropy_mean"] = lambda: scipy_cross_entropy_none(special, x, t, axis).mean()
        cases["cross_entropy_none"] = lambda: scipy_cross_entropy_none(special, x, t, axis)
        cases["log_softmax"] = lambda: special.log_softmax(x, axis=axis)
    return cases


def to_numpy(result):
    if isinstance(result, tuple):
        return tuple(to_numpy(r) for r in result)
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return np.asarray(result, dtype=np.float64)


def max_abs_difference(a, b):
    """Largest absolute difference between two results (a loss, or a (loss, grad) pair)."""
    a, b = to_numpy(a), to_numpy(b)
    if isinstance(a, tuple):
        return max(max_abs_difference(u, v) for u, v in zip(a, b))
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------------------------
# Yardsticks: how fast this machine can read and copy the logits at all


def yardsticks(x, threads, torch, timing_options):
    """Read and copy bandwidth (GB/s) for array x, the fastest honest way we know.

    read: np.add.reduce over the whole array (one thread: NumPy never threads a reduction), and
          torch.Tensor.sum() with `threads` threads where torch is installed. Both read every
          byte once and do one add per element. The larger figure is the yardstick.
    copy: np.copyto into a preallocated array (one thread) and torch.Tensor.copy_() with
          `threads` threads; bytes counted as read + written (2 x nbytes), like the
          fastxent figures of ops that write a full-size result.
    """
    nbytes = x.nbytes
    result = {}
    result["read_numpy_1t_gbps"] = nbytes / measure(lambda: np.add.reduce(x, axis=None),
                                                     **timing_options).seconds / 1e9
    y = np.empty_like(x)
    result["copy_numpy_1t_gbps"] = 2 * nbytes / measure(lambda: np.copyto(y, x),
                                                         **timing_options).seconds / 1e9
    if torch is not None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        result["read_torch_gbps"] = nbytes / measure(lambda: xt.sum(), **timing_options).seconds / 1e9
        result["copy_torch_gbps"] = 2 * nbytes / measure(lambda: yt.copy_(xt),
                                                         **timing_options).seconds / 1e9
    result["read_gbps"] = max(v for k, v in result.items() if k.startswith("read_"))
    result["copy_gbps"] = max(v for k, v in result.items() if k.startswith("copy_"))
    return result


# --------------------------------------------------------------------------------------------
# Worker: one process, one thread count


def load_opponents(wanted):
    libs, versions, missing = {}, {}, {}
    for name in wanted:
        try:
            if name == "torch":
                import torch

                libs[name] = torch
                versions[name] = torch.__version__
            elif name == "jax":
                import jax
                import jax.numpy as jnp

                libs[name] = (jax, jnp)
                versions[name] = jax.__version__
            elif name == "numpy":
                libs[name] = np
                versions[name] = np.__version__
            elif name == "scipy":
                import scipy
                import scipy.special

                libs[name] = scipy.special
                versions[name] = scipy.__version__
        except Exception as error:  # an absent or broken opponent is skipped, not fatal
            missing[name] = f"{type(error).__name__}: {error}"
    return libs, versions, missing


def set_thread_count(threads, libs, fastxent):
    if fastxent is not None:
        fastxent.set_num_threads(threads)
    if "torch" in libs:
        libs["torch"].set_num_threads(threads)


def make_inputs(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=DTYPE)
    x *= 2.0  # logits of a half-trained model: a few units wide
    target_shape = shape[:axis] + shape[axis + 1:]
    t = rng.integers(0, shape[axis], size=target_shape, dtype=np.int64)
    return x, t


def run_worker(args):
    """Time the libraries in args.worker_libs at args.worker_threads threads, in this process.

    The reference for the accuracy check (torch where installed, else NumPy) is loaded even
    when it is not timed here.
    """
    threads = args.worker_threads
    timed = args.worker_libs
    fastxent = importlib.import_module("fastxent") if "fastxent" in timed else None
    reference_name = "torch" if "torch" in args.opponents else "numpy"
    libs, versions, missing = load_opponents([n for n in OPPONENTS if n in timed or n == reference_name])
    if reference_name not in libs:
        reference_name = "numpy"
        libs.update(load_opponents(["numpy"])[0])
    set_thread_count(threads, libs, fastxent)
    timing_options = dict(min_repeats=args.min_repeats, min_time=args.min_time,
                          max_time=args.max_time)
    limit_bytes = args.numpy_max_mb * 1e6 if args.numpy_max_mb is not None else None
    rows = []
    for shape_name in args.shapes:
        shape, axis = SHAPES[shape_name]
        x, t = make_inputs(shape, axis)
        yard = None
        if args.worker_yardsticks:
            yard = yardsticks(x, threads, libs.get("torch"), timing_options)
            log(f"[{threads} thr] {shape_name}: read {yard['read_gbps']:.1f} GB/s, "
                f"copy {yard['copy_gbps']:.1f} GB/s")
        reference_cases = build_cases(reference_name, libs[reference_name], x, t, axis)
        case_sets = {}
        if fastxent is not None:
            case_sets["fastxent"] = build_cases("fastxent", fastxent, x, t, axis)
            case_sets["fastxent_out"] = build_cases("fastxent_out", fastxent, x, t, axis)
        for name in OPPONENTS:
            if name not in timed or name not in libs:
                continue
            if name in ("numpy", "scipy") and limit_bytes is not None and x.nbytes > limit_bytes:
                continue
            case_sets[name] = build_cases(name, libs[name], x, t, axis)
        for op in args.ops:
            row = {"op": op, "shape": shape_name, "input_shape": list(shape), "axis": axis,
                   "threads": threads, "dtype": np.dtype(DTYPE).name, "nbytes": x.nbytes,
                   "traffic_bytes": OP_TRAFFIC[op] * x.nbytes, "results": {}}
            if yard is not None:
                row["yardstick"] = yard
            reference = reference_cases[op]()
            fns = {name: cases[op] for name, cases in case_sets.items() if op in cases}
            failed = {}
            for name, fn in list(fns.items()):
                try:  # a library that cannot do this case is reported, not fatal
                    result = fn()
                    if name != reference_name:
                        row["results"][name] = {"max_abs_diff_vs_" + reference_name:
                                                max_abs_difference(result, reference)}
                    del result
                except Exception as error:
                    failed[name] = {"error": f"{type(error).__name__}: {error}"}
                    del fns[name]
            del reference
            timings = measure_interleaved(fns, **timing_options)
            for name in case_sets:
                if name in failed:
                    row["results"][name] = failed[name]
                elif name in timings:
                    entry = timings[name].as_dict()
                    entry["gbps"] = row["traffic_bytes"] / timings[name].seconds / 1e9
                    entry.update(row["results"].get(name, {}))
                    row["results"][name] = entry
            rows.append(row)
            log(f"  [{threads} thr] {shape_name} " + progress_line(row))
        del case_sets, reference_cases, x, t
        gc.collect()
    versions = {name: version for name, version in versions.items() if name in timed}
    missing = {name: reason for name, reason in missing.items() if name in timed}
    return {"threads": threads, "versions": versions, "missing": missing, "rows": rows}


def progress_line(row):
    parts = [f"{row['op']:<24}"]
    for name, entry in row["results"].items():
        if "ms" in entry:
            parts.append(f"{name} {entry['ms']:.3g} ms")
        else:
            parts.append(f"{name} failed ({entry.get('error')})")
    for key, diff in row["results"].get("fastxent", {}).items():
        if key.startswith("max_abs_diff_vs_"):
            parts.append(f"|fastxent - {key[len('max_abs_diff_vs_'):]}| {diff:.2g}"
                         + ("" if diff <= MISMATCH_TOLERANCE else "  MISMATCH"))
    return ", ".join(parts)


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Machine description


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def l3_cache_bytes():
    """The size of the last-level (L3) cache from sysfs, or None where it cannot be read."""
    try:
        base = "/sys/devices/system/cpu/cpu0/cache"
        for index in sorted(os.listdir(base)):
            with open(os.path.join(base, index, "level")) as f:
                if f.read().strip() != "3":
                    continue
            with open(os.path.join(base, index, "size")) as f:
                size = f.read().strip()
            units = {"K": 2**10, "M": 2**20, "G": 2**30}
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return None


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_description(fastxent_info):
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib(),
        "l3_cache_bytes": l3_cache_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastxent": fastxent_info,
        "load_average_at_start": load_average(),
    }


def load_average():
    """1, 5 and 15-minute load averages: other work on the machine makes every figure noisier."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fastxent_description():
    """Version and cpu_info() of fastxent, or the reason it cannot be imported."""
    code = ("import json, fastxent; info = dict(fastxent.cpu_info()); "
            "print(json.dumps({'version': getattr(fastxent, '__version__', None), "
            "'cpu_info': info}, default=str))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else "unknown error"
    return json.loads(proc.stdout), None


# --------------------------------------------------------------------------------------------
# Reports: Markdown table and plot


def format_ms(entry):
    if entry is None:
        return "–"
    if "ms" not in entry:
        return "error"
    ms = entry["ms"]
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def entry_ms(row, name):
    """The median time of `name` (fastxent, torch, jax, numpy) on `row`, or None without one."""
    entry = row["results"].get(name)
    return entry["ms"] if entry and "ms" in entry else None


def speedup(row, over):
    """How many times faster fastxent ran than `over` on `row`, or None where either has no time."""
    fx_ms, other_ms = entry_ms(row, "fastxent"), entry_ms(row, over)
    return other_ms / fx_ms if fx_ms and other_ms else None


def markdown_report(data):
    machine = data["machine"]
    fx = machine.get("fastxent") or {}
    info = fx.get("cpu_info", {})
    lines = [
        f"# fastxent benchmark, {data['date']}",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cores_available']} cores, "
        f"{machine['memory_gib']} GiB; fastxent {fx.get('version')} "
        f"(isa {info.get('isa')}, openmp {info.get('openmp')}); load average at start "
        f"{machine.get('load_average_at_start')}, at end {machine.get('load_average_at_end')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items())),
        "- float32; each time is the median of repeated calls (see bench/README.md); "
        "speed-up = torch ms / fastxent ms",
        "",
        "| op | shape | threads | fastxent ms | torch ms | speed-up | jax ms | numpy ms "
        "| fastxent GB/s | read GB/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["rows"]:
        res = row["results"]
        fx_entry, torch_entry = res.get("fastxent"), res.get("torch")
        ratio = speedup(row, "torch")
        speedup_text = "–" if ratio is None else f"{ratio:.2f}x"
        gbps = f"{fx_entry['gbps']:.1f}" if fx_entry and "gbps" in fx_entry else "–"
        read = row.get("yardstick", {}).get("read_gbps")
        read = f"{read:.1f}" if read is not None else "–"
        lines.append(
            f"| {row['op']} | {row['shape']} | {row['threads']} | {format_ms(fx_entry)} "
            f"| {format_ms(torch_entry)} | {speedup_text} | {format_ms(res.get('jax'))} "
            f"| {format_ms(res.get('numpy'))} | {gbps} | {read} |")
    lines += targets_report(data)
    errors = [(row, name, entry["error"]) for row in data["rows"]
              for name, entry in row["results"].items() if "error" in entry]
    errors += [(row, name, f"result differs from {key[len('max_abs_diff_vs_'):]}'s by {value:.3g}")
               for row in data["rows"] for name, entry in row["results"].items()
               for key, value in entry.items()
               if key.startswith("max_abs_diff_vs_") and name.startswith("fastxent")
               and not value <= MISMATCH_TOLERANCE]
    if errors:
        lines += ["", "Errors and mismatches:", ""]
        lines += [f"- {name} {row['op']} {row['shape']} ({row['threads']} threads): {error}"
                  for row, name, error in errors]
    return "\n".join(lines) + "\n"


# The project's speed targets (float32, fastxent against torch at the same thread count, at the
# most threads measured): op, the shapes it holds for (None: every shape of more than 1 MB, 10^6
# bytes), the least speed-up; log_softmax of 32 classes or fewer needs SMALL_CLASS_LOG_SOFTMAX.
SPEEDUP_TARGETS = [
    ("cross_entropy_mean", ["32x10"], 2.0),
    ("cross_entropy_mean", ["256x1000", "4096x1000"], 4.0),
    ("cross_entropy_mean", ["2048x32000", "256x128256", "4x256000"], 6.0),
    ("cross_entropy_mean", ["1048576x10", "1048576x2"], 15.0),
    ("cross_entropy_mean", ["16x21x128x128"], 6.0),
    ("cross_entropy_with_grad", None, 5.0),
    ("log_softmax", None, 1.5),
]
SMALL_CLASS_LOG_SOFTMAX = 5.0
# Against the machine, on arrays larger than the L3 cache: the forward within this many times one
# read of the logits, the loss with its gradient within this many times one copy.
YARDSTICK_TARGET = 2.0


def target_rows(data):
    """(target, shape, needed, reached, met) for each target a row of `data` measures, at the most
    threads measured; `reached` is None where the row has no figure for it."""
    rows = data["rows"]
    if not rows:
        return [], None
    threads = max(row["threads"] for row in rows)
    at_threads = [row for row in rows if row["threads"] == threads]

    out = []
    for op, shapes, needed in SPEEDUP_TARGETS:
        for row in at_threads:
            if row["op"] != op or not (row["shape"] in shapes if shapes else row["nbytes"] > 1e6):
                continue
            need = needed
            if op == "log_softmax" and row["input_shape"][row["axis"]] <= 32:
                need = SMALL_CLASS_LOG_SOFTMAX
            reached = speedup(row, "torch")
            out.append((f"`{op}` vs torch", row["shape"], f"{need:g}x", reached, reached is not None and reached >= need))
    l3 = data["machine"].get("l3_cache_bytes")
    for row in at_threads:
        if l3 is None or row["nbytes"] <= l3:
            continue
        yardstick = row.get("yardstick", {})
        fx_ms = entry_ms(row, "fastxent")
        if row["op"] == "cross_entropy_mean" and yardstick.get("read_gbps"):
            base, what = row["nbytes"] / yardstick["read_gbps"] / 1e6, "one read"
        elif row["op"] == "cross_entropy_with_grad" and yardstick.get("copy_gbps"):
            base, what = 2 * row["nbytes"] / yardstick["copy_gbps"] / 1e6, "one copy"
        else:
            continue
        # a ratio of times, smaller is better: the target is met at or below YARDSTICK_TARGET
        ratio = fx_ms / base if fx_ms else None
        out.append((f"`{row['op']}` time / {what}", row["shape"], f"{YARDSTICK_TARGET:g}x or less", ratio,
                    ratio is not None and ratio <= YARDSTICK_TARGET))
    # JAX: every row at every thread count, reported as the smallest speed-up
    against_jax = [(speedup(row, "jax"), row) for row in rows if speedup(row, "jax") is not None]
    if against_jax:
        least, row = min(against_jax, key=lambda pair: pair[0])
        out.append(("every op vs JAX (the least)", f"every shape; least: `{row['op']}` {row['shape']}, "
                    f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}", "above 1x", least, least > 1.0))
    return out, threads


def targets_report(data):
    """Markdown lines: the targets this run measures, what it reached, and whether each is met."""
    rows, threads = target_rows(data)
    if not rows:
        return []
    met = sum(1 for row in rows if row[4])
    lines = [
        "",
        f"Targets at {threads} threads (float32): {met} of {len(rows)} met.",
        "",
        "| target | shape | needed | reached | met |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for target, shape, needed, reached, ok in rows:
        value = "–" if reached is None else f"{reached:.2f}x"
        lines.append(f"| {target} | {shape} | {needed} | {value} | {'yes' if ok else '**no**'} |")
    return lines


def plot_report(data, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib is not installed: no plot written (pip install matplotlib)")
        return False
    thread_counts = sorted({row["threads"] for row in data["rows"]})
    shapes = list(dict.fromkeys(row["shape"] for row in data["rows"]))
    ops = list(dict.fromkeys(row["op"] for row in data["rows"]))
    fig, axes = plt.subplots(len(thread_counts), 1, figsize=(max(8, 1.3 * len(shapes)), 4 * len(thread_counts)),
                             squeeze=False)
    width = 0.8 / max(1, len(ops))
    for ax, threads in zip(axes[:, 0], thread_counts):
        for k, op in enumerate(ops):
            xs, ys = [], []
            for i, shape in enumerate(shapes):
                for row in data["rows"]:
                    ratio = speedup(row, "torch")
                    if row["threads"] == threads and row["op"] == op and row["shape"] == shape and ratio is not None:
                        xs.append(i + (k - (len(ops) - 1) / 2) * width)
                        ys.append(ratio)
            bars = ax.bar(xs, ys, width=width, label=op)
            ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=6, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.margins(y=0.15)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=20, fontsize=8)
        ax.set_ylabel("speed-up over torch")
        ax.set_title(f"fastxent vs torch {data['versions'].get('torch', '')}, float32, {threads} thread(s)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(ops), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.995))
    fig.text(0.99, 0.005, f"{data['machine']['cpu_model']}, {data['date']}", ha="right", fontsize=7)
    fig.tight_layout(rect=(0, 0.01, 1, 0.965))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(data, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, name + ".json")
    md_path = os.path.join(out_dir, name + ".md")
    png_path = os.path.join(out_dir, name + ".png")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
    table = markdown_report(data)
    with open(md_path, "w") as f:
        f.write(table)
    print(table)
    written = [json_path, md_path]
    if data["rows"] and plot_report(data, png_path):
        written.append(png_path)
    log("wrote " + ", ".join(written))


# --------------------------------------------------------------------------------------------
# Driver


def parse_list(text, known, aliases=None, what="value"):
    items = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if aliases and item in aliases:
            items += aliases[item]
        elif item in known:
            items.append(item)
        else:
            raise SystemExit(f"unknown {what} {item!r}; known: {', '.join(known)}")
    return list(dict.fromkeys(items))


def parse_threads(text):
    cores = available_cores()
    counts = []
    for item in text.split(","):
        item = item.strip()
        count = cores if item == "all" else int(item)
        if count < 1:
            raise SystemExit("thread counts must be positive")
        counts.append(count)
    return list(dict.fromkeys(counts))


def worker_environment(threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    if threads == 1:
        xla = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = (xla + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats / 0.05 s per figure, NumPy and SciPy skipped above 100 MB")
    parser.add_argument("--threads", default="1,all", help="comma-separated counts, 'all' = every core")
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated, from {', '.join(OPS)} (cross_entropy = mean and none)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--opponents", default=",".join(OPPONENTS),
                        help="comma-separated, from torch, jax, numpy, scipy (absent ones are skipped)")
    parser.add_argument("--numpy-max-mb", type=float, default=None,
                        help="skip NumPy and SciPy on inputs larger than this many MB")
    parser.add_argument("--min-repeats", type=int, default=None)
    parser.add_argument("--min-time", type=float, default=None, help="seconds per figure, at least")
    parser.add_argument("--max-time", type=float, default=3.0, help="seconds per figure, at most")
    parser.add_argument("--out", default=None, help="output folder (default: bench/results)")
    parser.add_argument("--name", default=None,
                        help="file stem of the outputs in --out (default: latest; with --plot-only, the JSON file's)")
    parser.add_argument("--no-fastxent", action="store_true", help="time the opponents only")
    parser.add_argument("--plot-only", metavar="JSON", help="rewrite the table and plot from a results file")
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--worker-libs", help=argparse.SUPPRESS)
    parser.add_argument("--worker-yardsticks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plot_only:
        with open(args.plot_only) as f:
            data = json.load(f)
        name = args.name or os.path.splitext(os.path.basename(args.plot_only))[0]
        write_reports(data, args.out or os.path.dirname(os.path.abspath(args.plot_only)), name)
        return 0

    args.ops = parse_list(args.ops, OPS, OP_ALIASES, "op")
    args.shapes = parse_list(args.shapes, list(SHAPES), None, "shape")
    args.opponents = parse_list(args.opponents, OPPONENTS, None, "opponent")
    if args.min_repeats is None:
        args.min_repeats = 3 if args.quick else 5
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 0.2
    if args.quick and args.numpy_max_mb is None:
        args.numpy_max_mb = 100.0

    if args.worker_threads is not None:
        args.worker_libs = args.worker_libs.split(",")
        result = run_worker(args)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0

    fastxent_info = None
    if not args.no_fastxent:
        fastxent_info, reason = fastxent_description()
        if fastxent_info is None:
            log(f"fastxent is not importable with {sys.executable}: {reason}\n"
                "Install it first (pip install -e . from the repository root), "
                "or pass --no-fastxent to time the opponents only.")
            return 2
    thread_counts = parse_threads(args.threads)
    cores = available_cores()
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": machine_description(fastxent_info),
        "settings": {"quick": args.quick, "min_repeats": args.min_repeats, "min_time": args.min_time,
                     "max_time": args.max_time, "numpy_max_mb": args.numpy_max_mb,
                     "dtype": np.dtype(DTYPE).name},
        "versions": {},
        "missing": {},
        "rows": [],
    }
    log(f"{data['machine']['cpu_model']}, {cores} cores; threads {thread_counts}; "
        f"ops {args.ops}; shapes {args.shapes}")
    load = data["machine"]["load_average_at_start"]
    if load and load[0] > cores - 0.5:
        log(f"note: load average {load[0]} on {cores} cores: other work competes for the cores, "
            "the figures will be noisy (worst at full thread count)")
    passthrough = ["--ops", ",".join(args.ops), "--shapes", ",".join(args.shapes),
                   "--opponents", ",".join(args.opponents), "--min-repeats", str(args.min_repeats),
                   "--min-time", str(args.min_time), "--max-time", str(args.max_time)]
    if args.numpy_max_mb is not None:
        passthrough += ["--numpy-max-mb", str(args.numpy_max_mb)]
    # JAX runs in a process of its own: for a while after its import and after each compilation
    # its threads keep the cores busy, which slows down whichever library is timed next.
    groups = [[n for n in ["fastxent"] + args.opponents if n != "jax"]]
    if args.no_fastxent:
        groups[0].remove("fastxent")
    if "jax" in args.opponents:
        groups.append(["jax"])
    groups = [group for group in groups if group]
    for threads in thread_counts:
        if threads > cores:
            log(f"skipping {threads} threads: only {cores} cores available")
            continue
        merged = {}
        for index, group in enumerate(groups):
            with tempfile.TemporaryDirectory() as tmp:
                out_file = os.path.join(tmp, "worker.json")
                command = [sys.executable, os.path.abspath(__file__),
                           "--worker-threads", str(threads), "--worker-libs", ",".join(group),
                           "--worker-out", out_file] + passthrough
                if index == 0:  # the yardsticks once per thread count, in the first process
                    command.append("--worker-yardsticks")
                proc = subprocess.run(command, env=worker_environment(threads))
                if proc.returncode != 0:
                    log(f"the {threads}-thread run of {', '.join(group)} failed "
                        f"(exit status {proc.returncode})")
                    return proc.returncode
                with open(out_file) as f:
                    result = json.load(f)
            data["versions"].update(result["versions"])
            data["missing"].update(result["missing"])
            for row in result["rows"]:
                key = (row["op"], row["shape"])
                if key in merged:
                    merged[key]["results"].update(row["results"])
                else:
                    merged[key] = row
        data["rows"] += list(merged.values())
    data["machine"]["load_average_at_end"] = load_average()
    if fastxent_info is not None:
        data["versions"]["fastxent"] = fastxent_info.get("version")
    for name, reason in data["missing"].items():
        log(f"{name} skipped: {reason}")
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    write_reports(data, args.out or default_out, args.name or "latest")
    return 0


def pin_to_cores(threads):
    """Restrict this process to `threads` cores, so that no library can use more."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


if __name__ == "__main__":
    if "--worker-threads" in sys.argv:
        pin_to_cores(int(sys.argv[sys.argv.index("--worker-threads") + 1]))
    sys.exit(main())
