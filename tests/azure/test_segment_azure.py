"""``lungseg segment`` with Azure Blob Storage in and out, against a real Azurite: the same
outputs as a local run, bad blobs in errors.csv, a run cut off by the storage going away finished
by the next, and one process per output and shard."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from azure.storage.blob import BlobServiceClient

from dicom_files import dicom_bytes
from held import PATCH, release
from held import held as hold
from lungseg.inference.segmenter import load_model
from lungseg.segment import segment_files
from lungseg.storage.azure import AzureSink, upload
from trained import assert_one_line_error, lungseg

pytestmark = [pytest.mark.azure, pytest.mark.usefixtures("one_torch_thread")]

CONN = "AZURE_STORAGE_CONNECTION_STRING"
BAD = {
    "bad/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
    "bad/empty.jpg": b"",
    "bad/notes.png": b"meeting notes, not an X-ray\n",
}


def archive(examples_dir: Path, folder: Path) -> Path:
    """The 12 real examples in two studies, one more as a DICOM file named as a CD names it (no
    suffix), three bad files, and files segment must pass by: text files (one without a
    suffix), a DICOMDIR and ground truth under masks/."""
    images = sorted((examples_dir / "COVID" / "images").glob("*.png"))
    for i, source in enumerate(images):
        target = folder / f"study{i % 2}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for key, data in BAD.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
    (folder / "README.txt").write_text("not an image")
    (folder / "cd").mkdir()
    raw = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16
    (folder / "cd" / "IM000001").write_bytes(dicom_bytes(raw, "MONOCHROME2", (0.15, 0.15)))
    (folder / "cd" / "DICOMDIR").write_bytes(dicom_bytes(raw))  # an index by name: passed by
    (folder / "cd" / "LICENSE").write_text("no suffix, not DICOM\n" * 20)
    (folder / "study0" / "masks").mkdir()
    shutil.copyfile(examples_dir / "COVID" / "masks" / images[0].name,
                    folder / "study0" / "masks" / images[0].name)  # fmt: skip
    return folder


def blobs(connection: str, url: str) -> dict[str, bytes]:
    """Every blob under ``az://container/prefix``, by name relative to the prefix."""
    container, _, prefix = url[len("az://") :].partition("/")
    client = BlobServiceClient.from_connection_string(connection).get_container_client(container)
    prefix = prefix.strip("/") + "/"
    return {
        b.name[len(prefix) :]: client.download_blob(b.name).readall()
        for b in client.list_blobs(name_starts_with=prefix)
    }


def table(data: bytes, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.startswith(("masks/", "overlays/"))}


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_azure_in_and_out_equals_a_local_run(
    azurite, tiny_run, examples_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(CONN, azurite.connection_string)
    data = archive(examples_dir, tmp_path / "archive")
    source = "az://segin/hospital/2024"
    upload(data, source, create_container=True, progress=False)
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("segout")
    model = ["--weights", tiny_run.run, "--device", "cpu", "--overlays"]

    local = tmp_path / "local"
    code, _, err = lungseg(["segment", data, "--out", local, *model], capsys)
    assert code == 0, err
    out = "az://segout/masks-v1"
    code, stdout, err = lungseg(["segment", source, "--out", out, *model], capsys)
    assert code == 0, err
    assert "segmented 13 image(s)" in stdout and "3 file(s) skipped" in stdout

    remote = blobs(azurite.connection_string, out)
    expected = local_files(local)
    assert outputs(remote) == outputs(expected)  # masks and overlays, byte for byte
    assert len([k for k in remote if k.startswith("masks/")]) == 13
    assert "masks/cd/IM000001.png" in remote  # found by its content, as in the local run
    assert "masks/study0/masks" not in " ".join(remote)  # ground truth is not an X-ray
    measured = table(remote["measurements.csv"])
    assert table(remote["measurements.csv"], drop=("file",)) == table(
        expected["measurements.csv"], drop=("file",)
    )
    assert {row["file"] for row in measured} == {f"{source}/{row['key']}" for row in measured}
    errors = {row["key"]: row for row in table(remote["errors.csv"])}
    assert set(errors) == set(BAD)
    assert errors["bad/corrupt.png"]["file"] == f"{source}/bad/corrupt.png"
    assert "empty file" in errors["bad/empty.jpg"]["problem"]
    assert "not an image" in errors["bad/notes.png"]["problem"]

    # Again: everything is done, so nothing is downloaded or segmented.
    result = segment_files(load_model(tiny_run.run, device="cpu"), source, out, overlays=True,
                           progress=False)  # fmt: skip
    assert (result.counts.read, result.counts.segmented, result.counts.skipped) == (0, 0, 16)
    assert blobs(azurite.connection_string, out)["measurements.csv"] == remote["measurements.csv"]

    # Azure in, local out: the same outputs again.
    mixed = tmp_path / "mixed"
    code, _, err = lungseg(["segment", source, "--out", mixed, *model], capsys)
    assert code == 0, err
    assert outputs(local_files(mixed)) == outputs(expected)


def test_storage_gone_mid_run_then_resumed(
    own_azurite, tiny_run, examples_dir, tmp_path, monkeypatch
):
    """The output's storage goes away after some images are recorded: the run stops with one
    line that says how to continue, and the next run does only the rest."""
    monkeypatch.setenv(CONN, own_azurite.connection_string)
    BlobServiceClient.from_connection_string(own_azurite.connection_string).create_container("seg")
    folder = tmp_path / "in"
    for k in range(3):
        (folder / f"c{k}").mkdir(parents=True)
        for source in sorted((examples_dir / "COVID" / "images").glob("*.png")):
            (folder / f"c{k}" / source.name).symlink_to(source)
    reference = tmp_path / "reference"
    segment_files(load_model(tiny_run.run, device="cpu"), folder, reference, progress=False)
    held = folder / "c1-held" / "x.png"
    held.parent.mkdir()
    hold(held)  # listed before c2/; reading it blocks until released
    out = "az://seg/run"
    script = (
        f"{PATCH}import sys\n"
        "from lungseg.core.errors import LungsegError\n"
        "from lungseg.inference.segmenter import load_model\n"
        "from lungseg.segment import segment_files\n"
        "try:\n"
        f"    segment_files(load_model({str(tiny_run.run)!r}, device='cpu'), {str(folder)!r}, "
        f"{out!r}, batch_size=4, ledger_rows=4, progress=False)\n"
        "except LungsegError as exc:\n"
        "    sys.exit(f'error: {exc}')\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                           env=os.environ.copy())  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while sum(k.startswith("parts/") and k.endswith(".csv")
                  for k in blobs(own_azurite.connection_string, out)) < 2:  # fmt: skip
            assert run.poll() is None, run.communicate()[1]
            assert time.monotonic() < deadline, "nothing recorded"
            time.sleep(0.05)
        recorded = sum(
            len(table(v)) for k, v in blobs(own_azurite.connection_string, out).items()
            if k.startswith("parts/") and k.endswith(".csv")
        )  # fmt: skip
        own_azurite.stop()
    finally:
        release(held)  # let the run go on, into the missing storage
    _, stderr = run.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert run.returncode == 1 and lines[-1].startswith("error: "), stderr
    assert "cannot reach" in lines[-1] and "run the same command again" in lines[-1]
    assert own_azurite.secret_text not in stderr

    own_azurite.start()
    shutil.rmtree(held.parent)
    result = segment_files(load_model(tiny_run.run, device="cpu"), folder, out, progress=False)
    assert 24 >= result.counts.skipped >= recorded >= 8
    assert result.counts.read == result.counts.segmented == 36 - result.counts.skipped
    remote = blobs(own_azurite.connection_string, out)
    assert remote["measurements.csv"] == (reference / "measurements.csv").read_bytes()
    assert outputs(remote) == outputs(local_files(reference))


def test_one_process_per_azure_output_and_shard(azurite, tiny_run, examples_dir, tmp_path,
                                                monkeypatch, capsys):  # fmt: skip
    monkeypatch.setenv(CONN, azurite.connection_string)
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("busy")
    images = examples_dir / "COVID" / "images"
    argv = ["segment", images, "--out", "az://busy/out", "--weights", tiny_run.run]
    with AzureSink.from_url("az://busy/out").lock(".locks/shard-0-of-2", "segment"):
        code, _, err = lungseg([*argv, "--shard", "0/2"], capsys)
        assert_one_line_error(code, err, "az://busy/out", "in use by another lungseg process")
        code, _, err = lungseg(argv, capsys)  # another sharding of the same output: refused
        assert_one_line_error(code, err, "az://busy/out", "another lungseg segment runs",
                              "shard-0-of-2")  # fmt: skip
        code, _, err = lungseg([*argv, "--shard", "1/2"], capsys)  # another shard may run
        assert code == 0, err
    code, _, err = lungseg(["segment", images, "--out", "az://missing/out", "--weights",
                            tiny_run.run], capsys)  # fmt: skip
    assert_one_line_error(code, err, "container 'missing' not found", "create it first")


def test_a_blob_deleted_after_listing_is_an_error_row(
    azurite, tiny_run, examples_dir, tmp_path, monkeypatch, capsys
):
    """Like a local file that vanished: one errors.csv row, and the run goes on."""
    from lungseg.segment.inputs import AzureInputs

    monkeypatch.setenv(CONN, azurite.connection_string)
    source = "az://gone/in"
    upload(examples_dir / "COVID" / "images", source, create_container=True, progress=False)
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = client.get_container_client("gone")
    victim = sorted(p.name for p in (examples_dir / "COVID" / "images").glob("*.png"))[4]
    listed = AzureInputs.items

    def deleting(self):
        for item in listed(self):
            if item.key == victim:  # listed, then deleted before it is read
                container.delete_blob(item.ref.name)
            yield item

    monkeypatch.setattr(AzureInputs, "items", deleting)
    out = tmp_path / "out"
    code, stdout, err = lungseg(["segment", source, "--out", out, "--weights", tiny_run.run,
                                 "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert "segmented 11 image(s)" in stdout and "1 file(s) skipped" in stdout
    (row,) = table((out / "errors.csv").read_bytes())
    assert row["key"] == victim and "deleted or replaced" in row["problem"], row


@pytest.mark.slow
def test_a_holder_stopped_past_its_lease_stops_when_it_resumes(
    azurite, tiny_run, examples_dir, tmp_path, monkeypatch
):
    """Run A is stopped (SIGSTOP) past its 15 s lease; run B takes the output over; A resumes
    (SIGCONT) and must stop before writing again: no image recorded twice."""
    import signal

    monkeypatch.setenv(CONN, azurite.connection_string)
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    client.create_container("lease")
    folder = tmp_path / "in"
    images = sorted((examples_dir / "COVID" / "images").glob("*.png"))
    for part, some in (("c0", images), ("c1", images[:6])):
        (folder / part).mkdir(parents=True)
        for source in some:
            shutil.copyfile(source, folder / part / source.name)
    (folder / "c0-held").mkdir()
    held = hold(folder / "c0-held" / "x.png")  # listed after c0/, before c1/
    out = "az://lease/out"
    script = (
        f"{PATCH}import sys\n"
        "import lungseg.storage.azure.sink as sink\n"
        "sink.LEASE_S = 15\n"
        "from lungseg.core.errors import LungsegError\n"
        "from lungseg.inference.segmenter import load_model\n"
        "from lungseg.segment import segment_files\n"
        "try:\n"
        f"    segment_files(load_model({str(tiny_run.run)!r}, device='cpu'), {str(folder)!r}, "
        f"{out!r}, batch_size=2, ledger_rows=2, progress=False)\n"
        "except LungsegError as exc:\n"
        "    sys.exit(f'error: {exc}')\n"
    )

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                                text=True, env=os.environ.copy())  # fmt: skip

    def ledgers() -> list[str]:
        return [k for k in blobs(azurite.connection_string, out)
                if k.startswith("parts/") and k.endswith(".csv")]  # fmt: skip

    lock = client.get_blob_client("lease", "out/.locks/shard-0-of-1")
    first = start()
    second = None
    try:
        deadline = time.monotonic() + 300
        while len(ledgers()) < 3:  # images of c0/ recorded; it waits on c0-held/
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run recorded nothing"
            time.sleep(0.1)
        first.send_signal(signal.SIGSTOP)
        time.sleep(17)  # its lease (15 s, renewed every 5 s) runs out
        second = start()
        while lock.get_blob_properties().lease.state != "leased":
            assert second.poll() is None, second.communicate()[1]
            assert time.monotonic() < deadline + 60, "the second run never took the lease"
            time.sleep(0.1)
        first.send_signal(signal.SIGCONT)
        release(held)
        _, first_err = first.communicate(timeout=120)
        _, second_err = second.communicate(timeout=180)
    finally:
        for run in (first, second):
            if run is not None and run.poll() is None:
                run.send_signal(signal.SIGCONT)
                run.kill()
                run.wait()
    assert first.returncode == 1 and "lost the lease" in first_err.strip().splitlines()[-1], (
        first_err
    )
    assert second.returncode == 0, second_err
    rows = [row for k in ledgers() for row in table(blobs(azurite.connection_string, out)[k])]
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 19, "an image recorded twice, or missed"
