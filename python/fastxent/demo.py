"""fastxent in one minute: the cross-entropy loss and its gradient on realistic batches.

    python -m fastxent.demo [--threads N] [--repeats R] [--quick]

For an image-classifier batch (4096 x 1000 logits) and a language-model batch (2048 x 32000
logits), this computes the mean cross-entropy and its gradient with respect to the logits
with fastxent (one pass over the logits), with a plain NumPy implementation, and with PyTorch's
autograd (forward + backward) when torch is installed. For each it prints the loss, the
distance to a float64 NumPy reference, the time (median of --repeats calls after one warm-up
call) and how many times faster fastxent is. Only NumPy is required.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastxent

CASES = [
    # (description, rows, classes)
    ("image classifier, batch of 4096, 1000 classes", 4096, 1000),
    ("language model, 2 x 1024 tokens, vocabulary of 32000", 2048, 32000),
]


def numpy_cross_entropy_with_grad(logits, target):
    """Mean cross-entropy and its gradient, written plainly in NumPy (in the logits' dtype)."""
    rows = np.arange(logits.shape[0])
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_probs_at_target = shifted[rows, target] - np.log(total[:, 0])
    loss = -log_probs_at_target.mean()
    grad = exp / total
    grad[rows, target] -= 1
    grad /= logits.shape[0]
    return loss, grad


def make_batch(rows, classes, seed):
    """Logits of a partly trained model: noise, with the right class a few units ahead."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, size=rows)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    logits *= 2.0
    logits[np.arange(rows), target] += 4.0
    return logits, target


def median_time(fn, repeats):
    fn()  # warm-up: first-touch page faults, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_torch():
    try:
        import torch
    except ImportError:  # optional: the demo runs without it
        return None
    return torch


def torch_runner(torch, logits, target):
    x = torch.from_numpy(logits.copy()).requires_grad_()
    t = torch.from_numpy(target.astype(np.int64))

    def run():
        x.grad = None
        loss = torch.nn.functional.cross_entropy(x, t)
        loss.backward()
        return loss.detach().numpy(), x.grad.numpy()

    return run


def run_case(description, rows, classes, repeats, torch, seed):
    logits, target = make_batch(rows, classes, seed)
    print(f"\n{description}: logits {rows} x {classes} float32 ({logits.nbytes / 1e6:.0f} MB)")
    reference_loss, reference_grad = numpy_cross_entropy_with_grad(logits.astype(np.float64), target)

    runners = [("fastxent", lambda: fastxent.cross_entropy_with_grad(logits, target)),
               ("numpy", lambda: numpy_cross_entropy_with_grad(logits, target))]
    if torch is not None:
        runners.append((f"torch {torch.__version__.split('+')[0]}", torch_runner(torch, logits, target)))

    print(f"  {'':<14} {'loss':>12} {'|loss - ref|':>13} {'max |grad - ref|':>17} {'ms':>9} "
          f"{'fastxent speed-up':>18}")
    fastxent_seconds = None
    for name, run in runners:
        loss, grad = run()
        loss = float(loss)
        grad_error = float(np.max(np.abs(np.asarray(grad, dtype=np.float64) - reference_grad)))
        seconds = median_time(run, repeats)
        if fastxent_seconds is None:
            fastxent_seconds = seconds
            comparison = ""
        else:
            comparison = f"{seconds / fastxent_seconds:.1f}x"
        print(f"  {name:<14} {loss:12.7f} {abs(loss - reference_loss):13.2e} {grad_error:17.2e} "
              f"{seconds * 1e3:9.2f} {comparison:>18}")
        del grad


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastxent.demo",
        description="fastxent's cross-entropy loss and gradient next to NumPy's and PyTorch's.")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastxent and torch (default: fastxent's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--quick", action="store_true", help="the small batch only")
    args = parser.parse_args(argv)

    if args.threads is not None:
        fastxent.set_num_threads(args.threads)
    threads = fastxent.get_num_threads()
    torch = load_torch()
    if torch is not None:
        torch.set_num_threads(threads)

    info = fastxent.cpu_info()
    print(f"fastxent {getattr(fastxent, '__version__', '')}: {info.get('isa')} kernels, "
          f"{threads} thread(s); numpy {np.__version__}; "
          + (f"torch {torch.__version__} with {threads} thread(s)" if torch is not None
             else "torch not installed"))
    print("Mean softmax cross-entropy over the batch and its gradient with respect to the logits.")
    print("ref = the same computation in float64 NumPy; times are medians of "
          f"{args.repeats} calls; the NumPy implementation is single-threaded.")

    cases = CASES[:1] if args.quick else CASES
    for seed, (description, rows, classes) in enumerate(cases):
        run_case(description, rows, classes, args.repeats, torch, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
