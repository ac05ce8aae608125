#!/usr/bin/env python
"""Does fastxent release the GIL? Two Python threads against one.

    python bench/gil.py [--shape 2048x32000] [--op cross_entropy] [--repeats 5]

fastxent.set_num_threads(1), then two arrays of the same shape:
  sequential: one Python thread computes op(a), then op(b);
  threaded:   two Python threads compute op(a) and op(b) at the same time.
ratio = sequential time / threaded time. With the GIL released inside the kernel, the two calls
overlap on two cores and the ratio approaches 2 (less where memory bandwidth is the limit);
with the GIL held it stays at 1. The same measurement of a pure-Python loop, which holds the
GIL, is printed as the control. Each time is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np


def run_threaded(work, inputs):
    """Run work(inp) for every input, each in its own thread; return (seconds, results)."""
    results = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs) + 1)

    def body(i):
        barrier.wait()
        results[i] = work(inputs[i])

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def run_sequential(work, inputs):
    start = time.perf_counter()
    results = [work(inp) for inp in inputs]
    return time.perf_counter() - start, results


def compare(work, inputs, repeats):
    """Median sequential and threaded seconds, alternating the two so that load hits both."""
    run_sequential(work, inputs)  # warm-up: page faults, thread start-up
    run_threaded(work, inputs)
    sequential, threaded = [], []
    for _ in range(repeats):
        sequential.append(run_sequential(work, inputs)[0])
        threaded.append(run_threaded(work, inputs)[0])
    return statistics.median(sequential), statistics.median(threaded)


def pure_python_loop(n):
    total = 0
    for i in range(n):
        total += i
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="2048x32000", help="rows x classes of each array")
    parser.add_argument("--op", default="cross_entropy",
                        choices=["cross_entropy", "cross_entropy_with_grad", "log_softmax"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    try:
        import fastxent
    except ImportError as error:
        print(f"fastxent is not importable with {sys.executable}: {error}", file=sys.stderr)
        return 2

    rows, classes = (int(v) for v in args.shape.lower().split("x"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fastxent.set_num_threads(1)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((rows, classes), dtype=np.float32) for _ in range(2)]
    targets = [rng.integers(0, classes, size=rows) for _ in range(2)]
    inputs = list(zip(arrays, targets))

    seen_threads = []

    def work(inp):
        seen_threads.append(fastxent.get_num_threads())
        x, t = inp
        if args.op == "cross_entropy":
            return fastxent.cross_entropy(x, t)
        if args.op == "cross_entropy_with_grad":
            return fastxent.cross_entropy_with_grad(x, t)[0]
        return fastxent.log_softmax(x)

    print(f"fastxent {getattr(fastxent, '__version__', '?')}, cpu_info {fastxent.cpu_info()}")
    print(f"{cores} cores available; fastxent.set_num_threads(1); op {args.op}, "
          f"two float32 arrays of {rows}x{classes} ({arrays[0].nbytes / 1e6:.0f} MB each)")
    if cores < 2:
        print("only one core: the threaded run cannot be faster, the ratio below means nothing")

    _, sequential_results = run_sequential(work, inputs)
    _, threaded_results = run_threaded(work, inputs)
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(sequential_results, threaded_results))

    sequential, threaded = compare(work, inputs, args.repeats)
    ratio = sequential / threaded
    print(f"fastxent   sequential {sequential * 1e3:8.1f} ms   two threads {threaded * 1e3:8.1f} ms"
          f"   ratio {ratio:.2f}")

    # The control: size the loop to last about as long as one fastxent call.
    n = 100_000
    start = time.perf_counter()
    pure_python_loop(n)
    n = max(n, int(n * (sequential / 2) / max(time.perf_counter() - start, 1e-9)))
    control_sequential, control_threaded = compare(pure_python_loop, [n, n], args.repeats)
    control_ratio = control_sequential / control_threaded
    print(f"control    sequential {control_sequential * 1e3:8.1f} ms   two threads "
          f"{control_threaded * 1e3:8.1f} ms   ratio {control_ratio:.2f}   (pure Python, holds the GIL)")

    if set(seen_threads) != {1}:
        print(f"note: fastxent.get_num_threads() seen from the calling threads: {sorted(set(seen_threads))} "
              "(expected 1 everywhere: the setting did not carry over to new Python threads)")
    if not same:
        print("WARNING: the threaded results differ from the sequential ones")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = load > cores - 0.5
    if busy:
        print(f"note: the machine is busy (load average {load:.1f} on {cores} cores): other work "
              "competes for the cores, the ratio understates the overlap; rerun on an idle machine")
    if ratio >= 1.5:
        verdict = "the GIL is released: the two calls ran in parallel"
    elif ratio <= 1.15 and busy:
        verdict = "inconclusive: no overlap measured, but the machine is busy"
    elif ratio <= 1.15:
        verdict = "the calls did not overlap: the GIL looks held"
    else:
        verdict = ("partial overlap: the GIL is released but the calls compete for something "
                   "(memory bandwidth, or other load on the machine)")
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
