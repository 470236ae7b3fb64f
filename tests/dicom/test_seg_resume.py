"""A DICOM SEG and SR made after a ``kill -9`` and a resume are the bytes an uninterrupted run
makes (issue 20): nothing in them depends on the clock, the run or the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from films import FILMS, film

from held import PATCH, held, kill_when, release
from lungseg.inference.segmenter import load_model
from lungseg.segment import segment_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dicom_outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for kind in ("dicom-seg", "dicom-sr")
        for p in sorted((out / kind).rglob("*.dcm"))
    }


def test_seg_and_sr_are_the_same_bytes_after_a_kill_and_a_resume(tiny_run, tmp_path) -> None:
    folder = tmp_path / "in"
    for sub in ("a", "b-held", "c"):
        (folder / sub).mkdir(parents=True)
    for k, name in enumerate(sorted(FILMS)):
        # Two folders; the second is listed after the held file, so the first run (killed)
        # never reaches it and the resumed run makes its objects.
        film(name).write(folder / ("a" if k % 2 else "c"))
    gate = held(folder / "b-held" / "x.png")  # folders are listed in order, files first
    reference = tmp_path / "reference"
    load = f"load_model({str(tiny_run.run)!r}, device='cpu')"
    script = (
        f"{PATCH}"
        "from lungseg.inference.segmenter import load_model\n"
        "from lungseg.segment import segment_files\n"
        f"segment_files({load}, {str(folder)!r}, {{out!r}}, dicom_seg=True, dicom_sr=True, "
        "batch_size=2, ledger_rows=1, progress=False)\n"
    )
    out = tmp_path / "out"
    try:
        kill_when(script.format(out=str(out)), lambda: len(_dicom_outputs(out)) >= 2,
                  "the first run made no DICOM object")  # fmt: skip
    finally:
        release(gate)
    before = _dicom_outputs(out)
    assert 0 < len(before) < 2 * len(FILMS)
    segmenter = load_model(tiny_run.run, device="cpu")
    segment_files(segmenter, folder, out, dicom_seg=True, dicom_sr=True, progress=False)
    segment_files(segmenter, folder, reference, dicom_seg=True, dicom_sr=True, batch_size=5,
                  progress=False)  # fmt: skip
    resumed = _dicom_outputs(out)
    assert len(resumed) == 2 * len(FILMS)
    assert resumed == _dicom_outputs(reference)
