"""``lungseg segment`` on local files: every format at its own resolution, outputs named after
their input, errors, and the reliability of a reused or shared output folder (issue 14)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dicom_files import dicom_bytes, dicom_dataset
from held import PATCH, held, release
from trained import assert_one_line_error, dice, lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: (row, col) pixel spacing in mm of the two DICOM files.
SPACING = {"mono2.dcm": (0.15, 0.2), "mono1.dcm": (0.15, 0.2)}


def _inputs(examples_dir: Path, folder: Path) -> dict[str, tuple[int, int]]:
    """One real X-ray written as PNG, JPEG, a JPEG stored sideways with EXIF saying so, RGBA,
    16-bit PNG and DICOM (MONOCHROME1/2), each at its own size, plus a corrupt PNG. Returns
    ``{key: (height, width)}`` of the good files, as they are displayed."""
    folder.mkdir()
    xray = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png")

    def sized(h: int, w: int) -> np.ndarray:
        return cv2.resize(xray, (w, h), interpolation=cv2.INTER_AREA)

    cv2.imwrite(str(folder / "gray.png"), sized(331, 287))
    cv2.imwrite(str(folder / "photo.jpg"), sized(400, 360), [cv2.IMWRITE_JPEG_QUALITY, 92])
    exif = Image.Exif()
    exif[274] = 6  # Orientation: the stored pixels are shown turned 90 degrees clockwise
    Image.fromarray(np.rot90(sized(331, 287))).save(folder / "sideways.jpg", exif=exif, quality=95)
    rgb = cv2.cvtColor(sized(250, 270), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(folder / "figure.png"), np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), sized(320, 320).astype(np.uint16) * 257)
    raw = sized(300, 280).astype(np.uint16) * 16  # 12-bit values
    (folder / "mono2.dcm").write_bytes(dicom_bytes(raw, "MONOCHROME2", SPACING["mono2.dcm"]))
    # MONOCHROME1 of the same picture: 12-bit values inverted within their range.
    (folder / "mono1.dcm").write_bytes(dicom_bytes(4095 - raw, "MONOCHROME1", SPACING["mono1.dcm"]))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return {
        "gray.png": (331, 287), "photo.jpg": (400, 360), "sideways.jpg": (331, 287),
        "figure.png": (250, 270),
        "deep.png": (320, 320), "mono2.dcm": (300, 280), "mono1.dcm": (300, 280),
    }  # fmt: skip


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    """``measurements.csv`` (or ``errors.csv``) by key."""
    with open(path, newline="") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_segment_every_format(tiny_run, examples_dir: Path, tmp_path: Path, capsys) -> None:
    sizes = _inputs(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run, "--device", "cpu",
            "--overlays"]  # fmt: skip
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert "segmented 7 image(s)" in stdout and "1 file(s) skipped" in stdout

    rows = rows_of(out / "measurements.csv")
    assert list(rows) == sorted(sizes)  # sorted by key
    masks = {}
    for key, (h, w) in sizes.items():
        row = rows[key]
        assert row["file"] == str(tmp_path / "in" / key)
        assert (row["mask"], row["overlay"]) == (f"masks/{key}.png", f"overlays/{key}.jpg")
        mask = read_gray(out / row["mask"])
        assert mask.shape == (h, w), key
        assert set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(out / row["overlay"])).shape == (h, w, 3), key
        masks[key] = mask > 127
        lung = int(masks[key].sum())
        assert lung > 0.1 * h * w, f"{key}: the tiny model should find the lungs"
        assert (int(row["height"]), int(row["width"]), int(row["lung_px"])) == (h, w, lung)
        assert float(row["lung_fraction"]) == pytest.approx(lung / (h * w), abs=1e-6)
        right, left = int(row["right_lung_px"]), int(row["left_lung_px"])
        assert right + left == lung and right > 0 and left > 0
        if key in SPACING:
            mm2 = SPACING[key][0] * SPACING[key][1]
            assert row["spacing_mm"] == "0.1500x0.2000"
            assert float(row["lung_cm2"]) == pytest.approx(lung * mm2 / 100, abs=1e-3)
            assert float(row["right_lung_cm2"]) == pytest.approx(right * mm2 / 100, abs=1e-3)
            assert float(row["left_lung_cm2"]) == pytest.approx(left * mm2 / 100, abs=1e-3)
        else:
            assert row["spacing_mm"] == row["lung_cm2"] == ""
        assert 0.0 <= float(row["uncertain_fraction"]) < 10.0
    # The most uncertain masks are named for review, in order.
    ranked = sorted(rows.values(), key=lambda r: (-float(r["uncertain_fraction"]), r["key"]))
    first = [r["key"] for r in ranked[:3]]
    assert f"review first (highest uncertain_fraction; more in qc.json): {first[0]}" in stdout
    assert stdout.index(first[1]) < stdout.index(first[2])
    # MONOCHROME1 stores the inverted values; decoded, it is the same image as the MONOCHROME2.
    assert dice(masks["mono1.dcm"], masks["mono2.dcm"]) > 0.99
    # A film stored sideways is segmented and written the way up it is displayed.
    assert dice(masks["sideways.jpg"], masks["gray.png"]) > 0.97
    assert int(rows["sideways.jpg"]["right_lung_px"]) == pytest.approx(
        int(rows["gray.png"]["right_lung_px"]), rel=0.05
    )

    (error,) = rows_of(out / "errors.csv").values()
    assert error["key"] == "broken.png" and "PNG" in error["problem"]
    assert error["file"] == str(tmp_path / "in" / "broken.png")


def test_segment_nothing_to_read(tiny_run, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["segment", tmp_path / "empty", "--out", tmp_path / "o", "--weights", tiny_run.run]
    code, _, err = lungseg(argv, capsys)
    assert_one_line_error(code, err, "no images found")
    assert not (tmp_path / "o").exists()


def test_dicom_files_named_without_a_suffix_are_found_by_content(
    tiny_run, examples_dir: Path, tmp_path: Path, capsys
) -> None:
    """A DICOM CD's file-set (pydicom writes it: DICOMDIR + PT000000/.../IM000000, file IDs
    without an extension, PS3.12) and storescp's UID-named files are X-rays; the DICOMDIR
    index and other files are not. lungseg once listed none of them and said nothing."""
    from pydicom.fileset import FileSet

    raw = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png").astype(np.uint16) * 16
    header = {
        "PatientID": "P1", "PatientName": "Doe^J", "StudyDate": "20260101", "StudyTime": "1010",
        "StudyID": "1", "AccessionNumber": "A1", "SeriesNumber": 1, "InstanceNumber": 1,
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.2",
    }  # fmt: skip
    media = tmp_path / "in" / "cd"
    file_set = FileSet()
    file_set.add(dicom_dataset(raw, "MONOCHROME2", (0.15, 0.15), header=header))
    file_set.write(media)
    received = tmp_path / "in" / "DX.1.2.826.0.1.3680043.8.498.7"  # storescp's name
    received.write_bytes(dicom_bytes(raw, "MONOCHROME2", (0.15, 0.15)))
    (tmp_path / "in" / "README").write_text("films from the CD\n")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert "segmented 2 image(s)" in stdout and "skipped" not in stdout
    rows = rows_of(out / "measurements.csv")
    assert sorted(rows) == [
        "DX.1.2.826.0.1.3680043.8.498.7",
        "cd/PT000000/ST000000/SE000000/IM000000",
    ]
    assert rows["DX.1.2.826.0.1.3680043.8.498.7"]["spacing_mm"] == "0.1500x0.1500"
    assert not (out / "errors.csv").exists() or not rows_of(out / "errors.csv")


def test_a_film_whose_header_says_it_is_not_a_frontal_chest_xray_is_up_for_review(
    tiny_run, examples_dir: Path, tmp_path: Path, capsys
) -> None:
    """The models know frontal chest films only: a lateral view, a CT slice or a knee in the
    folder gets a mask whose review column says why it is not to be trusted (it was
    segmented and measured like the others, with no word)."""
    raw = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png").astype(np.uint16) * 16
    films = {
        "pa.dcm": {"Modality": "DX", "ViewPosition": "PA", "BodyPartExamined": "CHEST"},
        "lateral.dcm": {"Modality": "DX", "ViewPosition": "LL", "BodyPartExamined": "CHEST"},
        "slice.dcm": {"Modality": "CT"},
        "knee.dcm": {"Modality": "CR", "BodyPartExamined": "KNEE"},
        "scan.dcm": {"Modality": "OT"},  # a digitised film's secondary capture
    }
    (tmp_path / "in").mkdir()
    for name, header in films.items():
        (tmp_path / "in" / name).write_bytes(dicom_bytes(raw, "MONOCHROME2", header=header))
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    review = {key: row["review"] for key, row in rows_of(out / "measurements.csv").items()}
    assert review["lateral.dcm"] == "not a frontal chest X-ray: view LL is not frontal (PA or AP)"
    assert review["slice.dcm"] == "not a frontal chest X-ray: modality CT is not CR/DX/OT/RG"
    assert review["knee.dcm"] == "not a frontal chest X-ray: body part KNEE is not the chest"
    for frontal in ("pa.dcm", "scan.dcm"):
        assert not review[frontal].startswith("not a frontal"), review[frontal]


@pytest.mark.shared_data
@pytest.mark.slow
def test_segment_fullres_originals(tiny_run, covid_cxr_fullres: Path, tmp_path: Path, capsys):
    images = covid_cxr_fullres / "images"
    out = tmp_path / "out"
    code, stdout, stderr = lungseg(
        ["segment", images, "--out", out, "--weights", tiny_run.checkpoint, "--device", "cpu"],
        capsys,
    )
    assert code == 0, stderr
    assert "segmented 40 image(s)" in stdout and not (out / "errors.csv").exists()
    rows = rows_of(out / "measurements.csv")
    originals = sorted(p for p in images.iterdir() if p.is_file())
    assert len(originals) == len(rows) == 40
    for path in originals:
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        with Image.open(out / "masks" / f"{path.name}.png") as im:
            assert im.mode == "1", "masks are 1-bit PNGs"
            assert im.size == (width, height), path.name
        assert (int(rows[path.name]["height"]), int(rows[path.name]["width"])) == (height, width)


def test_segment_fails_when_no_file_is_readable(tiny_run, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    (folder / "b.jpg").write_bytes(b"")
    argv = ["segment", folder, "--out", tmp_path / "out", "--weights", tiny_run.run]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "none of the 2 file(s) could be read" in err
    assert set(rows_of(tmp_path / "out" / "errors.csv")) == {"a.png", "b.jpg"}


def test_dataset_folder_gives_its_xrays_not_its_masks(examples_dir: Path) -> None:
    from lungseg.segment import find_images

    found = find_images([examples_dir])
    assert len(found) == 12 and all(p.parent.name == "images" for p in found)
    masks = examples_dir / "COVID" / "masks"
    assert find_images([masks]) == sorted(masks.glob("*.png"))  # asked for by name: searched


# -- issue 14: one output per input, one run per output, nothing unrecorded -------------------


def test_inputs_with_clashing_stems_get_their_own_masks(tiny_run, examples_dir, tmp_path, capsys):
    """x.png, x.jpg and x-1.png once made 2 masks for 3 images, two rows pointing at one."""
    images = sorted((examples_dir / "COVID" / "images").glob("*.png"))
    folder = tmp_path / "d"
    folder.mkdir()
    sizes = {"x.png": (300, 260), "x.jpg": (280, 310), "x-1.png": (240, 250)}
    for (key, (h, w)), source in zip(sizes.items(), images, strict=False):
        cv2.imwrite(str(folder / key), cv2.resize(read_gray(source), (w, h)))
    out = tmp_path / "o"
    code, stdout, stderr = lungseg(["segment", folder, "--out", out, "--weights", tiny_run.run],
                                   capsys)  # fmt: skip
    assert code == 0, stderr
    assert len(files_under(out / "masks")) == 3, "one mask per image"
    rows = rows_of(out / "measurements.csv")
    assert set(rows) == set(sizes)
    assert files_under(out / "masks") == {f"{key}.png" for key in sizes}
    for key, (h, w) in sizes.items():
        assert rows[key]["file"] == str(folder / key)
        assert read_gray(out / rows[key]["mask"]).shape == (h, w), key  # its own image's mask


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", f"{PATCH}import sys\nfrom lungseg.cli import main\nmain()",
         "segment", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _six_xrays(examples_dir: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for source in sorted((examples_dir / "COVID" / "images").glob("*.png"))[:6]:
        (folder / source.name).symlink_to(source)
    return folder


def test_a_second_run_on_the_same_output_is_refused(tiny_run, examples_dir, tmp_path, capsys):
    first_in = _six_xrays(examples_dir, tmp_path / "first")
    fifo = held(first_in / "zz-held.png")
    out = tmp_path / "o"
    first = _start(first_in, "--out", out, "--weights", tiny_run.run, "--device", "cpu")
    try:
        # It holds the output once it writes there (segment.json; before issue 14, masks/).
        _wait_for(lambda: (out / "segment.json").exists() or (out / "masks").exists(),
                  "the first run to start")  # fmt: skip
        second_in = _six_xrays(examples_dir, tmp_path / "second")
        argv = ["segment", second_in, "--out", out, "--weights", tiny_run.run]
        code, _, err = lungseg(argv, capsys)
        assert_one_line_error(code, err, str(out), "in use by another lungseg process")
    finally:
        release(fifo)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    rows = rows_of(out / "measurements.csv")
    assert len(rows) == 6 and "zz-held.png" in rows_of(out / "errors.csv")


def test_ctrl_c_records_what_is_done_and_says_how_to_resume(tiny_run, examples_dir, tmp_path):
    folder = _six_xrays(examples_dir, tmp_path / "in")
    fifo = held(folder / "zz-held.png")
    out = tmp_path / "o"
    # Batches of 4: the first is segmented, the second waits for the held file forever.
    args = [folder, "--out", out, "--weights", tiny_run.run, "--device", "cpu", "--batch-size", "4"]
    run = _start(*args)
    try:
        _wait_for(lambda: len(files_under(out / "masks")) >= 2, "masks to be written")
        run.send_signal(signal.SIGINT)
        _wait_for(lambda: (out / "measurements.csv").exists(), "the interrupted run to record")
    finally:
        release(fifo)
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr
    rows = rows_of(out / "measurements.csv")
    assert rows and {r["mask"] for r in rows.values()} == {
        f"masks/{m}" for m in files_under(out / "masks")
    }, "every mask written is recorded"
    assert len(rows) < 6
    fifo.unlink()
    done = subprocess.run([sys.executable, "-m", "lungseg", "segment", *map(str, args)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"segmented {6 - len(rows)} image(s)" in done.stdout
    assert f"{len(rows)} done before" in done.stdout
    assert len(rows_of(out / "measurements.csv")) == 6


def test_a_reused_output_lists_every_mask_it_holds(tiny_run, examples_dir, tmp_path, capsys):
    """Segmenting other images into the same output adds to it; measurements.csv then names
    every mask there, and never a mask of other settings."""
    images = sorted((examples_dir / "COVID" / "images").glob("*.png"))
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, chosen in ((first, images[:3]), (second, images[3:5])):
        folder.mkdir()
        for source in chosen:
            (folder / source.name).symlink_to(source)
    out = tmp_path / "o"
    model = ["--weights", tiny_run.run, "--device", "cpu"]
    for folder in (first, second):
        code, _, err = lungseg(["segment", folder, "--out", out, *model], capsys)
        assert code == 0, err
    with open(out / "measurements.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(files_under(out / "masks")) == 5
    rows = rows_of(out / "measurements.csv")
    assert {r["mask"] for r in rows.values()} == {f"masks/{m}" for m in files_under(out / "masks")}
    assert len(rows) == 5

    other = [*model, "--postprocess", "none"]
    code, _, err = lungseg(["segment", second, "--out", out, *other], capsys)
    assert_one_line_error(code, err, "other settings", "postprocess", "--overwrite")
    code, stdout, err = lungseg(["segment", second, "--out", out, *other, "--overwrite"], capsys)
    assert code == 0, err
    assert files_under(out / "masks") == {f"{p.name}.png" for p in images[3:5]}
    assert set(rows_of(out / "measurements.csv")) == {p.name for p in images[3:5]}


def test_an_output_of_the_old_layout_is_not_mixed_in(tiny_run, examples_dir, tmp_path, capsys):
    folder = _six_xrays(examples_dir, tmp_path / "in")
    out = tmp_path / "o"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "old.png").write_bytes(b"")
    (out / "measurements.csv").write_text("stem,file\nold,old.png\n")
    argv = ["segment", folder, "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, _, err = lungseg(argv, capsys)
    assert_one_line_error(code, err, "earlier lungseg segment", "--overwrite")
    code, _, err = lungseg([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert "old.png" not in files_under(out / "masks") and len(files_under(out / "masks")) == 6
    ground_truth = tmp_path / "dataset"
    (ground_truth / "masks").mkdir(parents=True)
    (ground_truth / "masks" / "x.png").write_bytes(b"")
    code, _, err = lungseg([*argv[:3], ground_truth, *argv[4:], "--overwrite"], capsys)
    assert_one_line_error(code, err, "masks/ folder that lungseg segment did not write")
