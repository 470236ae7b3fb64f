"""Fixtures of the tests against real DICOM systems: the realistic films (``films.py``); the
Orthanc PACS is the suite's ``orthanc`` fixture (tests/conftest.py, tests/orthanc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from films import Film, films


@pytest.fixture(scope="session")
def film_catalogue() -> dict[str, Film]:
    """Every film of ``films.FILMS`` by name."""
    return films()


@pytest.fixture(scope="session")
def film_folder(film_catalogue: dict[str, Film], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The films as ``<name>.dcm`` files in one folder (as a modality's export leaves them)."""
    folder = tmp_path_factory.mktemp("films")
    for film in film_catalogue.values():
        film.write(folder)
    return folder
