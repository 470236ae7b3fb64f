"""Azure Blob Storage source and ``lungseg upload``, against a real Azurite emulator (no mocks)."""

from __future__ import annotations

import logging
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from lungseg.cli import main
from lungseg.core.errors import LungsegError
from lungseg.data.cache import load_cache, prepare
from lungseg.storage.azure import AzureSource, upload

pytestmark = pytest.mark.azure

CONN = "AZURE_STORAGE_CONNECTION_STRING"
N_FILES = 80  # images and masks of the 40 pairs; METADATA.csv comes on top
SPLIT_COLUMNS = ("stem", "class", "patient_id", "split", "image_key", "mask_key")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``lungseg ARGS`` in this process: exit code, stdout, stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code: int, err: str) -> str:
    """The CLI failed with exactly one ``error:`` line; returns it."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def assert_same_cache(a: Path, b: Path) -> None:
    left, right = load_cache(a), load_cache(b)
    np.testing.assert_array_equal(left.images, right.images)
    np.testing.assert_array_equal(left.masks, right.masks)
    for column in SPLIT_COLUMNS:
        assert [r[column] for r in left.rows] == [r[column] for r in right.rows], column


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_upload_then_prepare_matches_local(
    azurite, cxr_subset, tmp_path, monkeypatch, capsys, azure_env
):
    monkeypatch.setenv(CONN, azurite.connection_string)
    data = tmp_path / "data"
    shutil.copytree(cxr_subset, data)
    url = "az://roundtrip/cxr/subset"
    code, out, err = run_cli(
        ["upload", "--data", str(data), "--to", url, "--create-container"], capsys
    )
    assert code == 0, err
    assert f"uploaded {N_FILES + 1} files" in out
    assert f"upload {url}: {N_FILES + 1}/{N_FILES + 1} files" in err

    prepare(data, tmp_path / "local", progress=False)
    remote = tmp_path / "remote"
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(remote)], capsys)
    assert code == 0, err
    assert f"download {url}: {N_FILES}/{N_FILES} files" in err
    assert_same_cache(tmp_path / "local", remote)
    assert load_cache(remote).source == url

    # Again: the cache is reused and nothing is downloaded or rewritten.
    before = mtimes(azure_env)
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(remote)], capsys)
    assert code == 0, err
    assert "download" not in err
    # A new cache folder from the same blobs: every file comes from the content cache.
    source = AzureSource.from_url(url, progress=False)
    prepare(source, tmp_path / "remote2", progress=False)
    assert (source.last_download.transferred, source.last_download.skipped) == (0, N_FILES)
    assert mtimes(azure_env) == before
    assert_same_cache(tmp_path / "local", tmp_path / "remote2")

    code, out, err = run_cli(["upload", "--data", str(data), "--to", url], capsys)
    assert code == 0, err
    assert f"uploaded 0 files (0 bytes) from {data} to {url}; {N_FILES + 1} already" in out

    # A changed file is uploaded again, and its blob (new ETag) downloaded again.
    changed = sorted((data / "COVID" / "images").iterdir())[3]
    cv2.imwrite(str(changed), cv2.flip(cv2.imread(str(changed), cv2.IMREAD_UNCHANGED), 1))
    code, out, err = run_cli(["upload", "--data", str(data), "--to", url], capsys)
    assert code == 0, err
    assert "uploaded 1 files" in out and f"{N_FILES} already identical" in out
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(remote)], capsys)
    assert code == 0, err
    assert f"download {url}: 1/1 files" in err
    prepare(data, tmp_path / "local", progress=False)
    assert_same_cache(tmp_path / "local", remote)

    # The replaced blob's old version stays cached until cleared: 81 files + 1 superseded.
    code, out, err = run_cli(["cache"], capsys)
    assert code == 0, err
    assert "roundtrip" in out and f"{N_FILES + 2}" in out
    code, out, err = run_cli(["cache", "--clear", "--container", "roundtrip"], capsys)
    assert code == 0, err
    assert f"removed {N_FILES + 2} cached files" in out
    assert not [p for p in azure_env.rglob("*") if p.is_file()]
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert f"download {url}: {N_FILES}/{N_FILES} files" in err
    assert_same_cache(tmp_path / "local", tmp_path / "again")


def test_interrupted_download_resumes(
    own_azurite, cxr_subset, tmp_path, monkeypatch, capsys, azure_env
):
    monkeypatch.setenv(CONN, own_azurite.connection_string)
    url = "az://interrupt/subset"
    upload(cxr_subset, url, create_container=True, progress=False)
    stop_after = 10
    fetched = []

    def stop_emulator(key: str, size: int) -> None:
        fetched.append(key)
        if len(fetched) == stop_after:
            own_azurite.stop()

    # One worker, so no other download slips through while the emulator shuts down.
    source = AzureSource.from_url(url, workers=1, progress=False, on_file=stop_emulator)
    with pytest.raises(LungsegError) as info:
        prepare(source, tmp_path / "out", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{url}: cannot reach http://127.0.0.1:{own_azurite.port}/")
    assert "container 'interrupt'" in message
    # on_file also saw METADATA.csv, fetched on its own before the images and masks
    assert f"the {stop_after - 1} of {N_FILES} files downloaded so far are kept" in message
    files = [p for p in azure_env.rglob("*") if p.is_file()]
    assert len(files) == stop_after
    assert not [p for p in files if p.name.endswith(".part")]

    own_azurite.start()
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    missing = N_FILES - (stop_after - 1)
    assert f"download {url}: {missing}/{missing} files" in err
    assert len([p for p in azure_env.rglob("*") if p.is_file()]) == N_FILES + 1


def assert_no_secret(secrets: list[str], texts: list[str], folders: list[Path]) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text
        for folder in folders:
            for path in folder.rglob("*"):
                if path.is_file():
                    assert secret.encode() not in path.read_bytes(), path


def test_credentials_never_leak(azurite, cxr_subset, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # even with the SDK's and urllib3's logs switched on
    outputs: list[str] = []
    out_dirs = [tmp_path]  # run outputs and the content cache (LUNGSEG_CACHE_DIR) are in here
    url = "az://secrets/data"

    # A wrong key: one clear line, no key, and no SDK exception kept as context.
    wrong = azurite.connection_string.replace(
        azurite.connection_string.split("AccountKey=")[1].split(";")[0], azurite.secret_key
    )
    monkeypatch.setenv(CONN, wrong)
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(tmp_path / "a")], capsys)
    line = error_line(code, err)
    assert "access denied to container 'secrets'" in line and CONN in line
    outputs += [out, err]
    code, out, err = run_cli(
        ["upload", "--data", str(cxr_subset), "--to", url, "--create-container"], capsys
    )
    assert "access denied to container 'secrets'" in error_line(code, err)
    outputs += [out, err]
    with pytest.raises(LungsegError) as info:
        AzureSource.from_url(url).list_keys()
    assert info.value.__context__ is None and info.value.__cause__ is None
    outputs.append("".join(traceback.format_exception(info.value)))

    # The right (secret) key: upload and prepare succeed without showing it.
    monkeypatch.setenv(CONN, azurite.secret_connection_string)
    code, out, err = run_cli(
        ["upload", "--data", str(cxr_subset), "--to", url, "--create-container"], capsys
    )
    assert code == 0, err
    outputs += [out, err]
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    outputs += [out, err]

    # A SAS token: reading succeeds, and a token for another container is refused.
    sas = generate_container_sas(
        azurite.secret_account,
        "secrets",
        account_key=azurite.secret_key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    signature = sas.split("sig=")[1].split("&")[0]
    monkeypatch.delenv(CONN)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", azurite.account_url(azurite.secret_account))
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    code, out, err = run_cli(["prepare", "--data", url, "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    outputs += [out, err]
    code, out, err = run_cli(["prepare", "--data", "az://other/data", "--out", "x"], capsys)
    assert "access denied to container 'other'" in error_line(code, err)
    outputs += [out, err, caplog.text]
    assert_same_cache(tmp_path / "b", tmp_path / "c")

    secrets = [azurite.secret_text, azurite.secret_key, quote(azurite.secret_key, safe="")]
    secrets += [signature, quote(signature, safe=""), sas]
    assert_no_secret(secrets, outputs, out_dirs)


def test_missing_container(azurite, tmp_path, monkeypatch, capsys, cxr_subset):
    monkeypatch.setenv(CONN, azurite.connection_string)
    code, _, err = run_cli(["prepare", "--data", "az://nosuch/x", "--out", str(tmp_path)], capsys)
    line = error_line(code, err)
    assert f"container 'nosuch' not found in account '{azurite_account(azurite)}'" in line
    code, _, err = run_cli(["upload", "--data", str(cxr_subset), "--to", "az://nosuch/x"], capsys)
    assert "pass --create-container to create it" in error_line(code, err)


def azurite_account(azurite) -> str:
    return azurite.account_url().rsplit("/", 1)[1]


def test_prefix_without_images(azurite, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CONN, azurite.connection_string)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.txt").write_text("not an X-ray\n")
    upload(docs, "az://prefixes/docs", create_container=True, progress=False)

    code, _, err = run_cli(
        ["prepare", "--data", "az://prefixes/typo", "--out", str(tmp_path / "o")], capsys
    )
    line = error_line(code, err)
    assert "no files under prefix 'typo/' in container 'prefixes' (it holds: docs/)" in line
    code, _, err = run_cli(
        ["prepare", "--data", "az://prefixes/docs", "--out", str(tmp_path / "o")], capsys
    )
    assert error_line(code, err).startswith("error: az://prefixes/docs: no images found")


def test_source_lists_once(azurite, tmp_path, monkeypatch):
    monkeypatch.setenv(CONN, azurite.connection_string)
    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"a")
    upload(folder, "az://listing/set", create_container=True, progress=False)
    source = AzureSource.from_url("az://listing/set", progress=False)
    assert source.list_keys() == ["images/a.png"]
    assert source.stat("images/a.png")[0] == 1
    (folder / "images" / "b.png").write_bytes(b"bb")
    upload(folder, "az://listing/set", progress=False)
    assert source.list_keys() == ["images/a.png"]  # the first listing is kept
    assert AzureSource.from_url("az://listing/set").list_keys() == ["images/a.png", "images/b.png"]
    assert source.read_bytes("images/a.png") == b"a"


def test_unreachable_endpoint_fails_fast(
    unreachable_connection_string, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(CONN, unreachable_connection_string)
    start = time.monotonic()
    code, _, err = run_cli(["prepare", "--data", "az://far/x", "--out", str(tmp_path)], capsys)
    assert time.monotonic() - start < 15
    line = error_line(code, err)
    assert "cannot reach http://127.0.0.1:" in line and "container 'far'" in line


def test_without_credentials(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["prepare", "--data", "az://data/x", "--out", str(tmp_path)], capsys)
    line = error_line(code, err)
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_URL",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
    ):
        assert name in line
    code, _, err = run_cli(["upload", "--data", str(tmp_path), "--to", "az://data/x"], capsys)
    assert "no files to upload" in error_line(code, err)
    (tmp_path / "a.png").write_bytes(b"x")
    code, _, err = run_cli(["upload", "--data", str(tmp_path), "--to", "az://data/x"], capsys)
    assert "AZURE_STORAGE_CONNECTION_STRING" in error_line(code, err)

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", "https://example.blob.core.windows.net")
    code, _, err = run_cli(["prepare", "--data", "az://data/x", "--out", str(tmp_path)], capsys)
    assert "set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN" in error_line(code, err)

    monkeypatch.setenv(CONN, "not a connection string")
    code, _, err = run_cli(["prepare", "--data", "az://data/x", "--out", str(tmp_path)], capsys)
    assert "AZURE_STORAGE_CONNECTION_STRING is malformed" in error_line(code, err)


def test_bad_urls(tmp_path, capsys):
    code, _, err = run_cli(["prepare", "--data", "az://A_B/x", "--out", str(tmp_path)], capsys)
    assert "invalid container name 'A_B'" in error_line(code, err)
    code, _, err = run_cli(
        ["prepare", "--data", "az://data/x?sv=1&sig=SECRET", "--out", str(tmp_path)], capsys
    )
    line = error_line(code, err)
    assert "AZURE_STORAGE_SAS_TOKEN" in line and "SECRET" not in line


def test_without_azure_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)  # as if not installed
    for name in [m for m in sys.modules if m.split(".")[:3] == ["lungseg", "storage", "azure"]]:
        monkeypatch.delitem(sys.modules, name)  # the package and its modules, imported afresh
    code, _, err = run_cli(["prepare", "--data", "az://data/x", "--out", str(tmp_path)], capsys)
    assert "pip install 'lungseg[azure]'" in error_line(code, err)
    code, _, err = run_cli(["upload", "--data", str(tmp_path), "--to", "az://data/x"], capsys)
    assert "pip install 'lungseg[azure]'" in error_line(code, err)
