"""DICOM SEG and SR made in worker processes (:class:`lungseg.dicom.encoder.DicomEncoder`): the
same bytes as in the calling thread, the same one-line errors, a dead worker costing nothing but
a restart, ``segment`` using the workers where it has more than one core, and a user's script
without a main guard left alone by them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.core.errors import LungsegError
from lungseg.dicom.encoder import DicomEncoder
from lungseg.dicom.seg import output_settings, read_header
from lungseg.dicom.sr import encode
from lungseg.inference import road
from lungseg.inference.segmenter import load_model
from trained import read_gray

pytest.importorskip("highdicom")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _film(examples_dir: Path, stem: str = "1d435a4b", size=(280, 300)) -> bytes:
    from pydicom.uid import generate_uid

    image = read_gray(next(examples_dir.glob(f"*/images/{stem}.png")))
    raw = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.uint16) * 16
    header = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
              "PatientID": "P-7", "StudyDate": "20240131", "StudyTime": "101500"}  # fmt: skip
    return dicom_bytes(raw, "MONOCHROME2", (0.15, 0.2), header=header)


@pytest.fixture(scope="module")
def encoded(tiny_run, examples_dir):
    """A film finished on the road (mask, measurements) with what encode() takes."""
    segmenter = load_model(tiny_run.run, device="cpu")
    data = _film(examples_dir)
    result = road.segment_bytes(data, "chest.dcm", segmenter)
    args = (read_header(data, "chest.dcm"), result.mask, result.measurements,
            segmenter.identity, output_settings(segmenter))  # fmt: skip
    return segmenter, data, args


def test_processes_make_the_same_bytes_and_the_same_errors(encoded):
    _, _, args = encoded
    here = encode(*args, name="chest.dcm", seg=True, sr=True)
    assert set(here) == {"dicom_seg", "dicom_sr"}
    with DicomEncoder(2) as encoder:
        assert encoder.started == 0  # nothing started before the first film
        there = encoder.encode(*args, name="chest.dcm", seg=True, sr=True)
        assert there == here
        assert encoder.encode(*args, name="chest.dcm", seg=True, sr=False) == {
            "dicom_seg": here["dicom_seg"]
        }
        # A mask that does not fit the header: the worker's LungsegError, one line, the name.
        header, mask, *rest = args
        with pytest.raises(LungsegError) as caught:
            encoder.encode(header, mask[:-1], *rest, name="chest.dcm", seg=True, sr=False)
        with pytest.raises(LungsegError) as direct:
            encode(header, mask[:-1], *rest, name="chest.dcm", seg=True, sr=False)
        assert str(caught.value) == str(direct.value)
        assert caught.value.path == "chest.dcm" and "does not match" in caught.value.problem
        assert encoder.started == 1


def test_a_worker_that_dies_costs_a_restart_not_the_film(encoded):
    _, _, args = encoded
    with DicomEncoder(1) as encoder:
        first = encoder.encode(*args, name="chest.dcm", seg=True, sr=False)
        (worker,) = encoder.workers._idle
        os.kill(worker.process.pid, signal.SIGKILL)  # an out-of-memory kill, as the kernel does
        worker.process.wait()
        assert encoder.encode(*args, name="chest.dcm", seg=True, sr=False) == first
        assert encoder.started == 2 and encoder.workers._idle[0] is not worker


def test_a_worker_that_keeps_dying_is_one_line_naming_the_film(encoded, monkeypatch):
    from lungseg.core.workers import WorkerDied, Workers

    def dies(self, function, *args):
        raise WorkerDied("a worker process died twice on one call")

    _, _, args = encoded
    monkeypatch.setattr(Workers, "call", dies)
    with DicomEncoder(1) as encoder, pytest.raises(LungsegError) as caught:
        encoder.encode(*args, name="chest.dcm", seg=True, sr=True)
    assert caught.value.path == "chest.dcm" and "died twice" in caught.value.problem


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="segment starts encoder processes on >= 2 cores"
)
def test_segment_encodes_in_processes_the_bytes_of_one_thread(encoded, examples_dir, tmp_path):
    from lungseg.segment import segment_files
    from lungseg.segment.pipeline import Pipeline

    segmenter, _, _ = encoded
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(sorted(examples_dir.glob("*/images/*"))[:4]):
        (folder / f"film{i}.dcm").write_bytes(_film(examples_dir, image.stem, (300, 320)))
    used = []
    run = Pipeline.run

    def spy(self, items):
        try:
            return run(self, items)
        finally:
            used.append(self.encoder)

    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"out{workers}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Pipeline, "run", spy)
            segment_files(segmenter, folder, outs[workers], workers=workers, dicom_seg=True,
                          dicom_sr=True, progress=False)  # fmt: skip
    assert used[0] is None and used[1] is not None and 1 <= used[1].started <= 2
    made = sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.dcm"))
    assert len(made) == 8  # a SEG and an SR per film
    for rel in made:
        assert (outs[2] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="segment starts encoder processes on >= 2 cores"
)
def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(
    encoded, examples_dir, tmp_path
):
    """multiprocessing's workers import the parent's main script again: this one would segment
    in each of them (and fight over the output's lock). lungseg's workers run only lungseg."""
    _, data, _ = encoded
    (tmp_path / "films").mkdir()
    for i in range(3):
        (tmp_path / "films" / f"film{i}.dcm").write_bytes(data)
    script = tmp_path / "noguard.py"
    script.write_text(
        "from lungseg.inference.segmenter import load_model\n"
        "from lungseg.segment import segment_files\n"
        "print('top level')\n"
        "model = load_model('unet-fast', device='cpu')\n"
        "segment_files(model, 'films', 'seg', dicom_seg=True, dicom_sr=True, progress=False)\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("top level") == 1
    assert not (tmp_path / "seg" / "errors.csv").exists()
    assert len(list((tmp_path / "seg").rglob("*.dcm"))) == 6
