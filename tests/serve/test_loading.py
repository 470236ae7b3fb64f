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


def test_two_workers_and_a_parent_without_models(onnx_cache, xray_files, tmp_path, capsys):
    """Issue 24 item 9: with ``--workers 2`` the parent kept 196 MiB of models it never used."""
    import time

    from server import start

    from trained import lungseg

    with start(["--workers", "2"], tmp_path, {"LUNGSEG_CACHE_DIR": str(onnx_cache)}) as server:
        body = xray_files["gray"].read_bytes()
        deadline = time.monotonic() + 90  # /readyz answered by one worker; the other may load
        while server.request("POST", "/v1/segment", body)[0] != 200:
            assert time.monotonic() < deadline, "the workers never answered"
            time.sleep(0.5)
        maps = open(f"/proc/{server.process.pid}/maps").read()
        assert "onnxruntime" not in maps and "libtorch" not in maps
        assert server.rss_bytes() < 150 * 2**20, server.rss_bytes()
    code, _, stderr = lungseg(
        ["serve", "--workers", "2", "--model", str(tmp_path / "missing.pt")], capsys
    )
    assert code == 2 and "model not found" in stderr and "Traceback" not in stderr


def test_a_damaged_cached_export_is_rebuilt(served_onnx, tmp_path, monkeypatch, caplog):
    """A cached export cut short stopped every start of the service; now it is exported again."""
    from lungseg.serve.loading import load_models
    from lungseg.serve.settings import ServeConfig

    cached = tmp_path / "onnx" / served_onnx.name
    cached.parent.mkdir()
    cached.write_bytes(served_onnx.read_bytes()[:5000])
    monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(tmp_path))
    models = load_models(ServeConfig(max_batch=1))
    assert list(models) == ["unet-fast"]
    assert cached.stat().st_size > 1_000_000
    assert "exporting it again" in caplog.text


def test_the_models_check_of_several_workers_runs_no_script_again(tmp_path):
    """``serve(workers=2)`` checks the models in a child first. It was a multiprocessing spawn
    child, which imports the caller's main script again: in a script without a main guard the
    child ran the script, failed in its own bootstrapping and never answered, and the parent
    waited on its queue for ever (as it did for a child killed while loading). Now lungseg's own
    worker process answers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "noguard.py"
    script.write_text(
        "from lungseg.core.errors import LungsegError\n"
        "from lungseg.serve import _check_models\n"
        "from lungseg.serve.settings import ServeConfig\n"
        "print('top level', flush=True)\n"
        "try:\n"
        f"    _check_models(ServeConfig(models=({str(tmp_path / 'missing.pt')!r},)))\n"
        "except LungsegError as exc:\n"
        "    print('refused:', exc.problem)\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(src)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "top level" and lines.count("top level") == 1, done.stdout
    assert lines[1].startswith("refused:") and "not found" in lines[1], done.stdout
