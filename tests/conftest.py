"""Fixtures shared by the whole suite: real data locations and small prepared caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATA = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``; skips the test where the shared data is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared real data not found at {path} (only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The bundled 12 example pairs (always present in a clone)."""
    return EXAMPLES


@pytest.fixture(scope="session")
def covid_cxr() -> Path:
    """``../shared/data/covid-cxr``: 355 real pairs; skips where the shared data is absent."""
    return shared_data("covid-cxr")


@pytest.fixture(scope="session")
def covid_cxr_fullres() -> Path:
    """``../shared/data/covid-cxr-fullres``: 40 originals of many sizes and colour modes."""
    return shared_data("covid-cxr-fullres")


@pytest.fixture(scope="session")
def shenzhen() -> Path:
    """``../shared/data/shenzhen``: 566 adults, visible-lung-field masks."""
    return shared_data("shenzhen")


@pytest.fixture(scope="session")
def tiny_run(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny U-Net trained once per session on the examples (``trained.TinyRun``; about 6 s)."""
    from trained import train_tiny

    return train_tiny(examples_dir, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one thread for the module: on shared cores, OpenMP threads that wait for each
    other make a small model's inference up to 30x slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def covid_subset30(covid_cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the first 30 image/mask pairs of ``covid-cxr`` (no METADATA: one patient each)."""
    import shutil

    root = tmp_path_factory.mktemp("subset30")
    for kind in ("images", "masks"):
        (root / "COVID" / kind).mkdir(parents=True)
    for image in sorted((covid_cxr / "COVID" / "images").glob("*.png"))[:30]:
        for kind in ("images", "masks"):
            shutil.copy(covid_cxr / "COVID" / kind / image.name, root / "COVID" / kind / image.name)
    return root


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc PACS with DICOMweb on 127.0.0.1 for the session (``tests/orthanc.py``);
    skips where Debian's ``orthanc`` and ``orthanc-dicomweb`` are not installed. Shared: a test
    stores instances of its own UIDs (or calls ``clear()``), and one that stops it starts its own
    (``orthanc.start(folder)``) instead."""
    from orthanc import orthanc_missing, start

    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    with start(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
