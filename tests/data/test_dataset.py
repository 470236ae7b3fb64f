"""Finding image/mask pairs in the supported layouts, with metadata, and the problems found."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lungseg.core.errors import LungsegError
from lungseg.data.dataset import discover
from lungseg.storage.sources import LocalSource, open_source

STEMS = ["1d435a4b", "4fed5061", "82a78c13"]


def _copy_pair(examples: Path, stem: str, image_to: Path, mask_to: Path) -> None:
    image_to.parent.mkdir(parents=True, exist_ok=True)
    mask_to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(examples / "COVID" / "images" / f"{stem}.png", image_to)
    shutil.copyfile(examples / "COVID" / "masks" / f"{stem}.png", mask_to)


def test_radiography_layout_with_metadata(examples_dir: Path) -> None:
    found = discover(LocalSource(examples_dir))
    assert found.problems == []
    assert len(found.records) == 12
    assert found.has_patient_ids
    with open(examples_dir / "METADATA.csv", newline="") as fh:
        meta = {row["stem"]: row for row in csv.DictReader(fh)}
    for r in found.records:
        assert r.image_key == f"COVID/images/{r.stem}.png"
        assert r.mask_key == f"COVID/masks/{r.stem}.png"
        assert r.cls == "COVID"
        assert r.patient_id == meta[r.stem]["patient_id"] != ""
        assert r.meta["view"] == meta[r.stem]["view"]
    assert [r.stem for r in found.records] == sorted(r.stem for r in found.records)


def test_class_from_folder_without_metadata(examples_dir: Path, tmp_path: Path) -> None:
    for cls, stem in zip(["COVID", "Normal", "Viral Pneumonia"], STEMS, strict=True):
        _copy_pair(
            examples_dir,
            stem,
            tmp_path / cls / "images" / f"{stem}.png",
            tmp_path / cls / "masks" / f"{stem}.png",
        )
    found = discover(LocalSource(tmp_path))
    assert {r.stem: r.cls for r in found.records} == {
        STEMS[0]: "COVID",
        STEMS[1]: "Normal",
        STEMS[2]: "Viral Pneumonia",
    }
    assert not found.has_patient_ids
    assert [r.patient_id for r in found.records] == [f"image:{r.stem}" for r in found.records]


@pytest.mark.parametrize("suffix", ["", "_mask"])
@pytest.mark.parametrize("root", ["", "montgomery/"])
def test_generic_layout(examples_dir: Path, tmp_path: Path, suffix: str, root: str) -> None:
    for stem in STEMS:
        _copy_pair(
            examples_dir,
            stem,
            tmp_path / f"{root}images" / f"{stem}.png",
            tmp_path / f"{root}masks" / f"{stem}{suffix}.png",
        )
    (tmp_path / "README.txt").write_text("not data")  # other files are ignored
    found = discover(LocalSource(tmp_path))
    assert found.problems == []
    assert [(r.stem, r.image_key, r.mask_key) for r in found.records] == [
        (s, f"{root}images/{s}.png", f"{root}masks/{s}{suffix}.png") for s in STEMS
    ]
    assert {r.patient_id for r in found.records} == {f"image:{s}" for s in STEMS}
    assert not found.has_patient_ids


def test_metadata_supplies_patient_ids_in_generic_layout(
    examples_dir: Path, tmp_path: Path
) -> None:
    for stem in STEMS:
        _copy_pair(
            examples_dir,
            stem,
            tmp_path / "images" / f"{stem}.png",
            tmp_path / "masks" / f"{stem}.png",
        )
    (tmp_path / "METADATA.csv").write_text(
        f"stem,patient_id,class\n{STEMS[0]},p1,COVID\n{STEMS[1]},p1,COVID\n{STEMS[2]},p2,Normal\n",
        encoding="utf-8",
    )
    found = discover(LocalSource(tmp_path))
    assert found.has_patient_ids
    assert {r.stem: (r.patient_id, r.cls) for r in found.records} == {
        STEMS[0]: ("p1", "COVID"),
        STEMS[1]: ("p1", "COVID"),
        STEMS[2]: ("p2", "Normal"),
    }


def test_partial_metadata_falls_back_per_image(examples_dir: Path, tmp_path: Path) -> None:
    for stem in STEMS:
        _copy_pair(
            examples_dir,
            stem,
            tmp_path / "images" / f"{stem}.png",
            tmp_path / "masks" / f"{stem}.png",
        )
    (tmp_path / "METADATA.csv").write_text(f"stem,patient_id\n{STEMS[0]},p1\n", encoding="utf-8")
    found = discover(LocalSource(tmp_path))
    assert not found.has_patient_ids  # a grouped split cannot be promised
    assert {r.stem: r.patient_id for r in found.records} == {
        STEMS[0]: "p1",
        STEMS[1]: f"image:{STEMS[1]}",
        STEMS[2]: f"image:{STEMS[2]}",
    }


def test_metadata_without_stem_column(examples_dir: Path, tmp_path: Path) -> None:
    _copy_pair(examples_dir, STEMS[0], tmp_path / "images/a.png", tmp_path / "masks/a.png")
    (tmp_path / "METADATA.csv").write_text("name,patient_id\na,1\n", encoding="utf-8")
    with pytest.raises(LungsegError, match=r"METADATA\.csv: needs a 'stem' column"):
        discover(LocalSource(tmp_path))


def test_problems_are_reported_per_file(examples_dir: Path, tmp_path: Path) -> None:
    for cls, stem in [("COVID", STEMS[0]), ("COVID", STEMS[1]), ("Normal", STEMS[1])]:
        _copy_pair(
            examples_dir,
            stem,
            tmp_path / cls / "images" / f"{stem}.png",
            tmp_path / cls / "masks" / f"{stem}.png",
        )
    covid = tmp_path / "COVID"
    _copy_pair(examples_dir, STEMS[2], covid / "images/nomask.png", covid / "masks/two.png")
    shutil.copyfile(covid / "images/nomask.png", covid / "images/two.png")
    shutil.copyfile(covid / "masks/two.png", covid / "masks/two_mask.png")
    shutil.copyfile(covid / "masks/two.png", covid / "masks/orphan.png")
    found = discover(LocalSource(tmp_path))
    problems = dict(found.problems)
    assert "missing mask" in problems["COVID/images/nomask.png"]
    assert "duplicate stem" in problems[f"COVID/images/{STEMS[1]}.png"]
    assert f"Normal/images/{STEMS[1]}.png" in problems[f"COVID/images/{STEMS[1]}.png"]
    assert "several masks" in problems["COVID/masks/two.png"]
    assert "COVID/masks/two_mask.png" in problems["COVID/masks/two.png"]
    assert problems["COVID/masks/orphan.png"] == "mask without an image"
    assert [r.stem for r in found.records] == [STEMS[0]]  # both copies of the duplicate are out


def test_mask_without_image(examples_dir: Path, tmp_path: Path) -> None:
    _copy_pair(examples_dir, STEMS[0], tmp_path / "images/a.png", tmp_path / "masks/a.png")
    shutil.copyfile(tmp_path / "masks/a.png", tmp_path / "masks/b.png")
    found = discover(LocalSource(tmp_path))
    assert found.problems == [("masks/b.png", "mask without an image")]


def test_without_required_masks(examples_dir: Path, tmp_path: Path) -> None:
    _copy_pair(examples_dir, STEMS[0], tmp_path / "images/a.png", tmp_path / "masks/a.png")
    (tmp_path / "masks/a.png").unlink()
    found = discover(LocalSource(tmp_path), require_masks=False)
    assert found.problems == []
    assert [(r.stem, r.mask_key) for r in found.records] == [("a", None)]


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LungsegError, match="no images found"):
        discover(LocalSource(tmp_path))


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(LungsegError, match="data folder not found"):
        open_source(tmp_path / "absent")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LungsegError, match="got a file"):
        open_source(tmp_path / "file.png")
    with pytest.raises(LungsegError, match="unsupported data URL"):
        open_source("s3://bucket/prefix")


def test_local_source_lists_sorted_posix_keys_without_hidden(tmp_path: Path) -> None:
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "images" / "x.png").write_bytes(b"1")
    (tmp_path / "a.png").write_bytes(b"22")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "y.png").write_bytes(b"3")
    (tmp_path / ".DS_Store").write_bytes(b"3")
    source = LocalSource(tmp_path)
    assert source.list_keys() == ["a.png", "b/images/x.png"]
    assert source.read_bytes("a.png") == b"22"
    assert source.stat("a.png")[0] == 2


@pytest.mark.shared_data
def test_covid_cxr(covid_cxr: Path) -> None:
    found = discover(LocalSource(covid_cxr))
    assert found.problems == []
    assert len(found.records) == 355
    assert found.has_patient_ids
    assert Counter(r.cls for r in found.records) == {"COVID": 352, "Normal": 2, "Unknown": 1}
    patients = {r.patient_id for r in found.records}
    assert 180 <= len(patients) <= 260  # "about 217 patients", several images each
    assert all(r.image_key.startswith(f"{r.cls}/images/") for r in found.records)


@pytest.mark.shared_data
def test_covid_cxr_fullres_jpeg_images_png_masks(covid_cxr_fullres: Path) -> None:
    found = discover(LocalSource(covid_cxr_fullres))
    assert found.problems == []
    assert len(found.records) == 40
    assert found.has_patient_ids
    suffixes = Counter(Path(r.image_key).suffix for r in found.records)
    assert suffixes[".jpg"] > 0 and suffixes[".jpeg"] > 0 and suffixes[".png"] > 0
    for r in found.records:
        assert r.mask_key == f"masks/{r.stem}.png"
        assert r.image_key == r.meta["image_file"]


def test_folder_and_suffix_case_ignored(examples_dir: Path, tmp_path: Path) -> None:
    _copy_pair(examples_dir, STEMS[0], tmp_path / "Images/a.PNG", tmp_path / "Masks/a.png")
    found = discover(LocalSource(tmp_path))
    assert [(r.image_key, r.mask_key) for r in found.records] == [("Images/a.PNG", "Masks/a.png")]


def test_same_stem_two_extensions_in_one_folder(examples_dir: Path, tmp_path: Path) -> None:
    _copy_pair(examples_dir, STEMS[0], tmp_path / "images/a.png", tmp_path / "masks/a.png")
    shutil.copyfile(tmp_path / "images/a.png", tmp_path / "images/a.jpg")
    found = discover(LocalSource(tmp_path))
    assert found.records == []
    assert found.problems == [("images/a.jpg", "duplicate stem 'a': also images/a.png")]
