"""Shared fixtures: the real MIRFLICKR subset (skipped where absent) and small generated data."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The subset lives beside the checkout and is never copied into it; TAGGER_SUBSET overrides.
SUBSET = Path(os.environ.get("TAGGER_SUBSET", REPO.parent / "shared" / "datasets" / "mirflickr25k_subset"))


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    if not (SUBSET / "annotations.jsonl").is_file():
        pytest.skip(f"shared MIRFLICKR subset not found at {SUBSET} (set TAGGER_SUBSET to its folder)")
    return SUBSET
