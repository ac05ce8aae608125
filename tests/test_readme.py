"""The README's Python examples run as written, each block on its own."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S) if README.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="README.md is not beside the tests")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, capsys):
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    if "spans" in namespace:  # the scoring example: each span's sum is its rows' log-probabilities
        per_token, starts, lengths = namespace["per_token"], namespace["starts"], namespace["continuation_lengths"]
        flat = per_token.logprob.reshape(-1).astype(np.float64)
        expected = [flat[s : s + n].sum() for s, n in zip(starts, lengths)]
        np.testing.assert_allclose(namespace["spans"].logprob, expected, rtol=1e-6)


def test_there_are_examples():
    assert not README.exists() or len(BLOCKS) >= 2
