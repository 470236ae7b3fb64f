"""Fixtures shared by the whole suite: real data locations and small prepared caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The bundled 12 example pairs (always present in a clone)."""
    return EXAMPLES


@pytest.fixture(scope="session")
def covid_cxr() -> Path:
    """``../shared/data/covid-cxr``: 355 real pairs; skips where the shared data is absent."""
    path = SHARED_DATA / "covid-cxr"
    if not path.is_dir():
        pytest.skip(f"shared real data not found at {path} (only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def covid_cxr_fullres() -> Path:
    """``../shared/data/covid-cxr-fullres``: 40 originals of many sizes and colour modes."""
    path = SHARED_DATA / "covid-cxr-fullres"
    if not path.is_dir():
        pytest.skip(f"shared real data not found at {path} (only on the project's machines)")
    return path
