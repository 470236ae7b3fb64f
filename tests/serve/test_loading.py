"""Model loading for the service: the ONNX export cache, and what happens when it cannot be
written (the service starts anyway, from an export in a temporary folder)."""

from __future__ import annotations

import pytest

from lungseg.models.shipped import shipped_weights
from lungseg.serve.loading import onnx_twin


@pytest.fixture
def unet_fast():
    return shipped_weights("unet-fast")


def test_the_export_is_cached_and_reused(unet_fast, tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(tmp_path))
    first = onnx_twin(unet_fast, "ab" * 32)
    assert first.parent == tmp_path / "onnx" and first.stat().st_size > 1_000_000
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left
    mtime = first.stat().st_mtime_ns
    assert onnx_twin(unet_fast, "ab" * 32) == first and first.stat().st_mtime_ns == mtime


def test_an_unwritable_cache_falls_back_to_a_temporary_folder(unet_fast, tmp_path, monkeypatch,
                                                               caplog):  # fmt: skip
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(blocker / "cache"))  # parent is a file
    with caplog.at_level("WARNING", logger="lungseg.serve"):
        path = onnx_twin(unet_fast, "cd" * 32)
    assert path.is_file() and not str(path).startswith(str(blocker))
    assert "cannot write the ONNX cache" in caplog.text
