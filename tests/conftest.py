"""Shared fixtures. Nothing here imports fastxent at module level, so the
reference tests run before the package is built."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test: every test sees the same data on every run."""
    return np.random.default_rng(20240611)


@pytest.fixture
def restore_num_threads():
    """Put fastxent's thread count back after a test that changes it."""
    import fastxent

    before = fastxent.get_num_threads()
    yield
    fastxent.set_num_threads(before)
