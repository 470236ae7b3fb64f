"""``lungseg segment``: masks and overlays at each file's own resolution, measurements, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from dicom_files import dicom_bytes
from lungseg.segment import lung_areas, measure
from trained import dice, lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: (row, col) pixel spacing in mm of the two DICOM files.
SPACING = {"mono2": (0.15, 0.2), "mono1": (0.15, 0.2)}


def _inputs(examples_dir: Path, folder: Path) -> dict[str, tuple[int, int]]:
    """One real X-ray written as PNG, JPEG, RGBA, 16-bit PNG and DICOM (MONOCHROME1/2), each at
    its own size, plus a corrupt PNG. Returns ``{stem: (height, width)}`` of the good files."""
    folder.mkdir()
    xray = read_gray(examples_dir / "COVID" / "images" / "1d435a4b.png")

    def sized(h: int, w: int) -> np.ndarray:
        return cv2.resize(xray, (w, h), interpolation=cv2.INTER_AREA)

    cv2.imwrite(str(folder / "gray.png"), sized(331, 287))
    cv2.imwrite(str(folder / "photo.jpg"), sized(400, 360), [cv2.IMWRITE_JPEG_QUALITY, 92])
    rgb = cv2.cvtColor(sized(250, 270), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(folder / "figure.png"), np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), sized(320, 320).astype(np.uint16) * 257)
    raw = sized(300, 280).astype(np.uint16) * 16  # 12-bit values
    (folder / "mono2.dcm").write_bytes(dicom_bytes(raw, "MONOCHROME2", SPACING["mono2"]))
    # MONOCHROME1 of the same picture: 12-bit values inverted within their range.
    (folder / "mono1.dcm").write_bytes(dicom_bytes(4095 - raw, "MONOCHROME1", SPACING["mono1"]))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return {
        "gray": (331, 287), "photo": (400, 360), "figure": (250, 270), "deep": (320, 320),
        "mono2": (300, 280), "mono1": (300, 280),
    }  # fmt: skip


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["stem"]: row for row in csv.DictReader(fh)}


def test_segment_every_format(tiny_run, examples_dir: Path, tmp_path: Path, capsys) -> None:
    sizes = _inputs(examples_dir, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", tmp_path / "in", "--out", out, "--weights", tiny_run.run, "--device", "cpu"]
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert "segmented 6 image(s)" in stdout and "1 file(s) skipped" in stdout

    rows = _rows(out / "measurements.csv")
    assert set(rows) == set(sizes)
    masks = {}
    for stem, (h, w) in sizes.items():
        mask = read_gray(out / "masks" / f"{stem}.png")
        assert mask.shape == (h, w), stem
        assert set(np.unique(mask)) <= {0, 255}
        assert read_gray(out / "overlays" / f"{stem}.png").shape == (h, w, 3), stem
        masks[stem] = mask > 127
        row = rows[stem]
        lung = int(masks[stem].sum())
        assert lung > 0.1 * h * w, f"{stem}: the tiny model should find the lungs"
        assert (int(row["height"]), int(row["width"]), int(row["lung_px"])) == (h, w, lung)
        assert float(row["lung_fraction"]) == pytest.approx(lung / (h * w), abs=1e-6)
        right, left = int(row["right_lung_px"]), int(row["left_lung_px"])
        assert right + left == lung and right > 0 and left > 0
        if stem in SPACING:
            mm2 = SPACING[stem][0] * SPACING[stem][1]
            assert row["spacing_mm"] == "0.1500x0.2000"
            assert float(row["lung_cm2"]) == pytest.approx(lung * mm2 / 100, abs=1e-3)
            assert float(row["right_lung_cm2"]) == pytest.approx(right * mm2 / 100, abs=1e-3)
            assert float(row["left_lung_cm2"]) == pytest.approx(left * mm2 / 100, abs=1e-3)
        else:
            assert row["spacing_mm"] == row["lung_cm2"] == ""
        assert 0.0 <= float(row["uncertain_fraction"]) < 10.0
    # The most uncertain files are named for review, in order.
    ranked = sorted(rows.values(), key=lambda r: (-float(r["uncertain_fraction"]), r["file"]))
    first = [Path(r["file"]).name for r in ranked[:3]]
    assert f"review first (highest uncertain_fraction): {first[0]}" in stdout
    assert stdout.index(first[1]) < stdout.index(first[2])
    # MONOCHROME1 stores the inverted values; decoded, it is the same image as the MONOCHROME2.
    assert dice(masks["mono1"], masks["mono2"]) > 0.99

    with open(out / "errors.csv", newline="") as fh:
        (error,) = list(csv.DictReader(fh))
    assert error["file"].endswith("broken.png") and "PNG" in error["problem"]


def test_lung_areas_by_side() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:5, 1:4] = True  # 9 px on the image's left: the patient's right lung
    mask[2:6, 12:17] = True  # 20 px on the image's right: the patient's left lung
    assert lung_areas(mask) == (9, 20)
    row = measure("a", "a.dcm", mask, (0.5, 0.4))
    assert row["lung_px"] == 29 and row["lung_fraction"] == pytest.approx(29 / 200)
    assert row["lung_cm2"] == pytest.approx(29 * 0.2 / 100)
    assert row["right_lung_cm2"] == pytest.approx(9 * 0.2 / 100)


def test_lungs_joined_across_the_midline_are_cut_at_the_mediastinum() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:35, 4:18] = True  # 420 px: right lung
    mask[8:38, 23:36] = True  # 390 px: left lung
    mask[30:33, 18:23] = True  # 15 px: a bridge over the heart, narrowest at columns 18..22
    right, left = lung_areas(mask)
    assert right + left == int(mask.sum())
    assert abs(right - 420) <= 9 and abs(left - 390) <= 9  # the bridge is shared, the lungs not
    one_lung = np.zeros((40, 40), bool)
    one_lung[5:35, 4:22] = True  # a right lung reaching just over the midline stays whole
    assert lung_areas(one_lung) == (int(one_lung.sum()), 0)


def test_segment_nothing_to_read(tiny_run, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["segment", tmp_path / "empty", "--out", tmp_path / "o", "--weights", tiny_run.run]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "no images found" in err and "Traceback" not in err


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
    rows = _rows(out / "measurements.csv")
    originals = sorted(p for p in images.iterdir() if p.is_file())
    assert len(originals) == len(rows) == 40
    for path in originals:
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        mask = read_gray(out / "masks" / f"{path.stem}.png")
        assert mask.shape == (height, width), path.name
        assert (int(rows[path.stem]["height"]), int(rows[path.stem]["width"])) == (height, width)


def test_segment_fails_when_no_file_is_readable(tiny_run, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    (folder / "b.jpg").write_bytes(b"")
    argv = ["segment", folder, "--out", tmp_path / "out", "--weights", tiny_run.run]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "none of the 2 file(s) could be read" in err
    with open(tmp_path / "out" / "errors.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_dataset_folder_gives_its_xrays_not_its_masks(examples_dir: Path) -> None:
    from lungseg.segment import find_images

    found = find_images([examples_dir])
    assert len(found) == 12 and all(p.parent.name == "images" for p in found)
    masks = examples_dir / "COVID" / "masks"
    assert find_images([masks]) == sorted(masks.glob("*.png"))  # asked for by name: searched
