"""Fixtures of the tests against real DICOM systems: the realistic films (``films.py``); the
Orthanc PACS is the suite's ``orthanc`` fixture (tests/conftest.py, tests/orthanc.py)."""

from __future__ import annotations

import pytest
from films import Film, films


@pytest.fixture(scope="session")
def film_catalogue() -> dict[str, Film]:
    """Every film of ``films.FILMS`` by name."""
    return films()
