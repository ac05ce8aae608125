#!/usr/bin/env python
"""Benchmark fastxent.score and fastxent.score_spans against the PyTorch way of computing the same.

    python bench/score.py                      # 2048x32000 and 512x128256, float32 and bfloat16, 1 and 2 threads
    python bench/score.py --threads 1 --repeats 3 --shapes 2048x32000 --dtypes float32

What is compared, per shape, dtype and thread count (one target per row; bfloat16 logits are an
ml_dtypes array for fastxent, read without a float32 copy, and a bfloat16 tensor for torch):

* ``score`` (all six fields) against torch's minimal equivalent, ``log_softmax`` + ``gather`` +
  ``argmax`` (logprob, argmax, is_greedy), and against torch computing every field of ``score``
  (adding ``logsumexp``, the rank as a comparison count and the entropy);
* ``score_spans`` against torch's ``log_softmax`` + ``gather`` + ``argmax`` and per-span sums (by
  cumulative sums in float64). The spans tile every row (64 rows each), so fastxent reads as many
  rows as torch; with spans covering fewer rows, fastxent reads only those.

Times are the minimum over ``--repeats`` runs, in milliseconds; a ratio is torch's time over
fastxent's (above 1: fastxent is faster). The Markdown table is printed, the figures written as JSON
(default bench/results/score.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

import fastxent as fx

SHAPES = {"2048x32000": (2048, 32000), "512x128256": (512, 128256)}
SPAN_ROWS = 64


def best_time(function, repeats):
    function()  # warm-up: page faults, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def torch_functions(torch, x, target, starts, lengths):
    t = torch.from_numpy(target).unsqueeze(-1)
    span_ends = torch.from_numpy(starts + lengths)
    span_starts = torch.from_numpy(starts)

    def minimal():
        logprob = torch.log_softmax(x, dim=-1).gather(-1, t).squeeze(-1)
        argmax = x.argmax(dim=-1)
        return logprob, argmax, argmax == t.squeeze(-1)

    def every_field():
        log_softmax = torch.log_softmax(x, dim=-1)
        logprob = log_softmax.gather(-1, t).squeeze(-1)
        lse = torch.logsumexp(x, dim=-1)
        argmax = x.argmax(dim=-1)
        rank = (x > x.gather(-1, t)).sum(-1)
        entropy = -(log_softmax.exp() * log_softmax).nan_to_num().sum(-1)
        return logprob, lse, argmax, argmax == t.squeeze(-1), rank, entropy

    def spans():
        logprob = torch.log_softmax(x, dim=-1).gather(-1, t).squeeze(-1).double()
        missed = (x.argmax(dim=-1) != t.squeeze(-1)).long()
        zero = torch.zeros(1, dtype=torch.float64)
        logprob_sums = torch.cat([zero, logprob.cumsum(0)])
        missed_sums = torch.cat([zero.long(), missed.cumsum(0)])
        span_logprob = logprob_sums[span_ends] - logprob_sums[span_starts]
        span_greedy = missed_sums[span_ends] == missed_sums[span_starts]
        return span_logprob, span_greedy

    return minimal, every_field, spans


def logits_of(torch, logits32, dtype):
    """(fastxent's array, torch's tensor) holding the same values in ``dtype``."""
    if dtype == "float32":
        return logits32, torch.from_numpy(logits32)
    import ml_dtypes

    return logits32.astype(ml_dtypes.bfloat16), torch.from_numpy(logits32).to(torch.bfloat16)


def run(shapes, dtypes, thread_counts, repeats):
    import torch

    rng = np.random.default_rng(0)
    rows = []
    for name, dtype in [(name, dtype) for name in shapes for dtype in dtypes]:
        n, classes = SHAPES[name]
        logits32 = (3.0 * rng.standard_normal((n, classes), dtype=np.float32)).astype(np.float32)
        logits, tensor = logits_of(torch, logits32, dtype)
        del logits32
        target = rng.integers(0, classes, size=n)
        starts = np.arange(0, n, SPAN_ROWS, dtype=np.int64)
        lengths = np.minimum(SPAN_ROWS, n - starts).astype(np.int64)
        minimal, every_field, spans = torch_functions(torch, tensor, target, starts, lengths)
        for threads in thread_counts:
            fx.set_num_threads(threads)
            torch.set_num_threads(threads)
            times = {
                "fastxent_score": best_time(lambda: fx.score(logits, target), repeats),
                "torch_minimal": best_time(minimal, repeats),
                "torch_every_field": best_time(every_field, repeats),
                "fastxent_score_spans": best_time(lambda: fx.score_spans(logits, target, starts, lengths), repeats),
                "torch_spans": best_time(spans, repeats),
            }
            row = dict(shape=name, dtype=dtype, threads=threads, **{k: round(v, 3) for k, v in times.items()})
            row["ratio_score_vs_torch_minimal"] = round(times["torch_minimal"] / times["fastxent_score"], 2)
            row["ratio_score_vs_torch_every_field"] = round(times["torch_every_field"] / times["fastxent_score"], 2)
            row["ratio_spans_vs_torch"] = round(times["torch_spans"] / times["fastxent_score_spans"], 2)
            rows.append(row)
            print(f"  {name} {dtype} threads={threads}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()), flush=True)
    return rows


def markdown(rows):
    lines = [
        "| shape | dtype | threads | score ms | torch lsm+gather+argmax ms | ratio | torch every field ms | ratio "
        "| score_spans ms | torch spans ms | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['threads']} | {r['fastxent_score']:.1f} | {r['torch_minimal']:.1f} | "
            f"{r['ratio_score_vs_torch_minimal']:.2f} | {r['torch_every_field']:.1f} | "
            f"{r['ratio_score_vs_torch_every_field']:.2f} | {r['fastxent_score_spans']:.1f} | "
            f"{r['torch_spans']:.1f} | {r['ratio_spans_vs_torch']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "score.json"))
    options = parser.parse_args()

    import torch

    rows = run(options.shapes, options.dtypes, options.threads, options.repeats)
    table = markdown(rows)
    print()
    print(table)
    result = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count()),
        versions=dict(fastxent=fx.__version__, torch=torch.__version__, numpy=np.__version__),
        cpu_info=fx.cpu_info(),
        repeats=options.repeats,
        span_rows=SPAN_ROWS,
        results=rows,
        markdown=table,
    )
    os.makedirs(os.path.dirname(options.out), exist_ok=True)
    with open(options.out, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(f"\nwritten to {options.out}")


if __name__ == "__main__":
    main()
