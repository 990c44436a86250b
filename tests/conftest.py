"""Shared test fixtures: where ../shared/data lives, and skips when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(os.environ.get("DTKD_SHARED_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = SHARED_DATA / "weights"
BENCHMARK = SHARED_DATA / "benchmark"
FIXTURES = SHARED_DATA / "fixtures"

requires_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"shared data not found at {SHARED_DATA} (clone ../shared beside the repo or set DTKD_SHARED_DATA)",
)


def need(path: Path) -> Path:
    """Return ``path`` or skip the test with a reason naming what is missing."""
    if not path.exists():
        pytest.skip(f"needs {path}, which is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return need(SHARED_DATA)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: fast on a shared 2-core machine, fixed arithmetic order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
