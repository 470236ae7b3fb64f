"""``prepare``: the cache of preprocessed arrays, its reuse and rebuilds, and bad input."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from dicom_files import dicom_bytes
from lungseg.core.errors import BadInputError, LungsegError
from lungseg.core.locking import LOCK_FILE
from lungseg.data.cache import load_cache, prepare
from lungseg.data.io import decode_image
from lungseg.data.preprocessing import PreprocessConfig, preprocess
from lungseg.data.settings import PrepareConfig
from png_files import png_declaring

SIZE = 64
SPLIT_COLUMNS = ["stem", "class", "patient_id", "split"]


def _config(preset: str = "seed", size: int = SIZE, seed: int = 0) -> PrepareConfig:
    return PrepareConfig(PreprocessConfig.from_preset(preset, size), seed=seed)


def _stamp(path: Path) -> tuple[int, int]:
    """Changes whenever the file is rewritten (atomic writes replace the inode)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _nearest_binary(mask_file: Path, size: int = SIZE) -> np.ndarray:
    """The reference for a cached mask: binarise the original, then nearest-resize it."""
    original = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
    binary = (original >= 128).astype(np.uint8)
    return cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)


def _split_rows(cache: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(cache / "split.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _check_patients_on_one_side(rows: list[dict[str, str]]) -> None:
    sides: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sides[row["patient_id"]].add(row["split"])
    assert all(len(s) == 1 for s in sides.values())


# ---------------------------------------------------------------------------------------------
# The real sets


@pytest.fixture(scope="module")
def covid_cache(covid_cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("covid-cxr") / "cache"
    prepare(covid_cxr, out, _config(), workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def fullres_cache(covid_cxr_fullres: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fullres") / "cache"
    prepare(covid_cxr_fullres, out, _config(), workers=1, progress=False)
    return out


@pytest.mark.shared_data
def test_covid_cxr_arrays(covid_cxr: Path, covid_cache: Path) -> None:
    data = load_cache(covid_cache, expect=_config())
    assert data.images.shape == data.masks.shape == (355, SIZE, SIZE)
    assert data.images.dtype == data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) == {0, 1}
    lung_share = data.masks.reshape(355, -1).mean(axis=1)
    assert lung_share.min() > 0.05 and lung_share.max() < 0.8
    assert all(data.images[i].max() > data.images[i].min() for i in range(355))
    for i, row in enumerate(data.rows):
        mask_file = covid_cxr / row["class"] / "masks" / f"{row['stem']}.png"
        np.testing.assert_array_equal(
            data.masks[i], _nearest_binary(mask_file), err_msg=row["stem"]
        )
    for i in range(0, 355, 25):
        row = data.rows[i]
        image_file = covid_cxr / row["class"] / "images" / f"{row['stem']}.png"
        original = cv2.imread(str(image_file), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(data.images[i], preprocess(original, data.config.preprocess))


@pytest.mark.shared_data
def test_covid_cxr_split_csv_and_manifest(covid_cache: Path) -> None:
    columns, rows = _split_rows(covid_cache)
    assert columns[:4] == SPLIT_COLUMNS
    assert len(rows) == 355
    _check_patients_on_one_side(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["train"] / 355 == pytest.approx(0.72, abs=0.03)
    assert counts["val"] / 355 == pytest.approx(0.18, abs=0.03)
    assert counts["test"] / 355 == pytest.approx(0.10, abs=0.03)
    manifest = yaml.safe_load((covid_cache / "prepare.yaml").read_text())
    assert manifest["n_images"] == 355
    assert manifest["grouped_by_patient"] is True
    assert manifest["split_counts"] == counts
    assert manifest["n_skipped"] == 0
    assert not (covid_cache / "skipped.csv").exists()
    data = load_cache(covid_cache)
    assert [data.rows[i]["split"] for i in data.indices("val")] == ["val"] * counts["val"]
    assert len(data.indices("all")) == 355
    with pytest.raises(LungsegError, match="unknown split 'dev'"):
        data.indices("dev")


@pytest.mark.shared_data
def test_one_worker_equals_two(covid_cxr: Path, covid_cache: Path, tmp_path: Path) -> None:
    single = tmp_path / "cache"
    prepare(covid_cxr, single, _config(), workers=1, progress=False)
    for name in ("images.npy", "masks.npy"):
        np.testing.assert_array_equal(np.load(single / name), np.load(covid_cache / name))
    assert (single / "split.csv").read_text() == (covid_cache / "split.csv").read_text()


@pytest.mark.shared_data
def test_second_prepare_reuses(covid_cxr: Path, covid_cache: Path) -> None:
    before = {name: _stamp(covid_cache / name) for name in ("images.npy", "prepare.yaml")}
    data = prepare(covid_cxr, covid_cache, _config(), workers=2, progress=False)
    assert {name: _stamp(covid_cache / name) for name in before} == before
    assert data.images.shape == (355, SIZE, SIZE)


@pytest.mark.shared_data
def test_load_cache_with_other_settings(covid_cache: Path) -> None:
    with pytest.raises(LungsegError) as info:
        load_cache(covid_cache, expect=_config(size=128))
    message = str(info.value)
    assert str(covid_cache) in message
    assert "preprocess.size: asked 128, cache has 64" in message
    with pytest.raises(LungsegError, match="seed: asked 5, cache has 0"):
        load_cache(covid_cache, expect=_config(seed=5))


@pytest.mark.shared_data
def test_fullres_originals(covid_cxr_fullres: Path, fullres_cache: Path) -> None:
    data = load_cache(fullres_cache, expect=_config())
    assert data.images.shape == data.masks.shape == (40, SIZE, SIZE)
    assert set(np.unique(data.masks)) == {0, 1}
    _check_patients_on_one_side(data.rows)
    with open(covid_cxr_fullres / "METADATA.csv", newline="", encoding="utf-8") as fh:
        meta = {row["stem"]: row for row in csv.DictReader(fh)}
    modes = {row["mode"] for row in data.rows}
    assert {"L", "RGB", "RGBA"} <= modes
    for i, row in enumerate(data.rows):
        m = meta[row["stem"]]
        assert (row["orig_width"], row["orig_height"]) == (m["orig_width"], m["orig_height"])
        assert row["mode"] == m["orig_mode"]
        np.testing.assert_array_equal(
            data.masks[i], _nearest_binary(covid_cxr_fullres / m["mask_file"]), err_msg=row["stem"]
        )
    # The image path on the extremes: the smallest (RGBA) and the largest original.
    areas = [int(r["orig_width"]) * int(r["orig_height"]) for r in data.rows]
    for i in (int(np.argmin(areas)), int(np.argmax(areas))):
        image_file = covid_cxr_fullres / data.rows[i]["image_key"]
        decoded = decode_image(image_file.read_bytes(), str(image_file))
        np.testing.assert_array_equal(
            data.images[i], preprocess(decoded.pixels, data.config.preprocess)
        )


# ---------------------------------------------------------------------------------------------
# Reuse and rebuilds, on a copy of the bundled examples


@pytest.fixture
def examples_copy(examples_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(examples_dir, tmp_path / "examples"))


def test_examples_cache(examples_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    data = prepare(examples_copy, out, _config("none"), workers=1, progress=False)
    assert data.images.shape == (12, SIZE, SIZE)
    assert data.config == _config("none")
    assert {p.name for p in out.iterdir()} == {
        LOCK_FILE,  # the lock of the prepare that built it (released, see lungseg.core.locking)
        "images.npy",
        "masks.npy",
        "split.csv",
        "prepare.yaml",
    }
    columns, rows = _split_rows(out)
    assert columns[:4] == SPLIT_COLUMNS
    assert [r["stem"] for r in rows] == data.stems
    _check_patients_on_one_side(rows)
    for i, stem in enumerate(data.stems):
        original = cv2.imread(str(examples_copy / "COVID/images" / f"{stem}.png"), 0)
        np.testing.assert_array_equal(data.images[i], preprocess(original, data.config.preprocess))


@pytest.mark.parametrize(
    "change",
    ["size", "preset", "seed", "touch image", "replace mask", "add pair", "metadata", "force"],
)
def test_rebuild_on_change(examples_copy: Path, tmp_path: Path, change: str) -> None:
    out = tmp_path / "cache"
    prepare(examples_copy, out, _config(), workers=1, progress=False)
    first = _stamp(out / "images.npy")
    prepare(examples_copy, out, _config(), workers=1, progress=False)
    assert _stamp(out / "images.npy") == first  # unchanged input: reused
    config, force = _config(), False
    covid = examples_copy / "COVID"
    if change == "size":
        config = _config(size=32)
    elif change == "preset":
        config = _config("clahe")
    elif change == "seed":
        config = _config(seed=1)
    elif change == "touch image":
        target = covid / "images" / "1d435a4b.png"
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "replace mask":
        shutil.copyfile(covid / "masks" / "4fed5061.png", covid / "masks" / "1d435a4b.png")
    elif change == "add pair":
        shutil.copyfile(covid / "images" / "4fed5061.png", covid / "images" / "extra.png")
        shutil.copyfile(covid / "masks" / "4fed5061.png", covid / "masks" / "extra.png")
    elif change == "metadata":
        text = (examples_copy / "METADATA.csv").read_text(encoding="utf-8")
        (examples_copy / "METADATA.csv").write_text(text.replace(",COVID,", ",Normal,", 1))
    elif change == "force":
        force = True
    data = prepare(examples_copy, out, config, workers=1, progress=False, force=force)
    assert _stamp(out / "images.npy") != first
    assert load_cache(out, expect=config).config == config
    if change == "size":
        assert data.images.shape == (12, 32, 32)
    if change == "add pair":
        assert "extra" in data.stems and len(data.rows) == 13
    if change == "replace mask":
        i = data.stems.index("1d435a4b")
        np.testing.assert_array_equal(
            data.masks[i], _nearest_binary(covid / "masks" / "4fed5061.png")
        )
    if change == "metadata":
        assert sorted(r["class"] for r in data.rows).count("Normal") == 1


def test_incomplete_cache_is_rebuilt(examples_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare(examples_copy, out, _config(), workers=1, progress=False)
    (out / "prepare.yaml").unlink()
    with pytest.raises(LungsegError, match="not a prepared cache"):
        load_cache(out)
    first = _stamp(out / "images.npy")
    prepare(examples_copy, out, _config(), workers=1, progress=False)
    assert _stamp(out / "images.npy") != first
    assert load_cache(out).images.shape == (12, SIZE, SIZE)


def test_parallel_path_on_examples(examples_copy: Path, tmp_path: Path) -> None:
    # Runs where the shared data is absent too: two worker processes give the same arrays.
    one = prepare(examples_copy, tmp_path / "one", _config(), workers=1, progress=False)
    two = prepare(examples_copy, tmp_path / "two", _config(), workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(one.images), np.asarray(two.images))
    np.testing.assert_array_equal(np.asarray(one.masks), np.asarray(two.masks))
    assert one.rows == two.rows


def test_dicom_spacing_kept(examples_dir: Path, tmp_path: Path) -> None:
    image = cv2.imread(str(examples_dir / "COVID/images/1d435a4b.png"), 0)
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/images/chest.dcm").write_bytes(
        dicom_bytes(image.astype(np.uint16) * 16, spacing=(0.4, 0.5))
    )
    shutil.copytree(examples_dir / "COVID/masks", tmp_path / "data/masks")
    (tmp_path / "data/masks/chest.png").write_bytes(
        (examples_dir / "COVID/masks/1d435a4b.png").read_bytes()
    )
    shutil.copytree(examples_dir / "COVID/images", tmp_path / "data/images", dirs_exist_ok=True)
    data = prepare(tmp_path / "data", tmp_path / "cache", _config(), workers=1, progress=False)
    i = data.stems.index("chest")
    assert data.rows[i]["mode"] == "DICOM"
    assert data.spacing(i) == pytest.approx((0.4 * 299 / SIZE, 0.5 * 299 / SIZE))
    assert data.spacing(data.stems.index("1d435a4b")) is None


# ---------------------------------------------------------------------------------------------
# Bad input: every problem listed, and no cache; or skipped and listed with skip_bad


def _encode(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def make_bad_dataset(examples_dir: Path, root: Path) -> dict[str, str]:
    """A copy of the 12 examples plus one bad file of each kind.

    Returns:
        The bad file's key -> a word its problem line must contain.
    """
    shutil.copytree(examples_dir, root)
    covid = root / "COVID"
    xray = cv2.imread(str(covid / "images/1d435a4b.png"), 0)
    mask = cv2.imread(str(covid / "masks/1d435a4b.png"), 0)
    png, jpeg = _encode(xray, ".png"), _encode(xray, ".jpg")
    bad_images = {
        "corrupt.png": (b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(3000), "corrupt"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero.png": (b"", "empty"),
        "text.png": (b"this is a note, not an X-ray\n", "not an image"),
        "bomb.png": (png_declaring(20000, 20000), "decompression bomb"),
    }
    expected = {}
    for name, (content, word) in bad_images.items():
        (covid / "images" / name).write_bytes(content)
        (covid / "masks" / f"{Path(name).stem}.png").write_bytes(png_mask := _encode(mask, ".png"))
        expected[f"COVID/images/{name}"] = word
    (covid / "images/nomask.png").write_bytes(png)
    expected["COVID/images/nomask.png"] = "missing mask"
    (covid / "images/aspect.png").write_bytes(png)
    (covid / "masks/aspect.png").write_bytes(_encode(cv2.resize(mask, (256, 128)), ".png"))
    expected["COVID/masks/aspect.png"] = "aspect ratio"
    (covid / "images/greymask.png").write_bytes(png)
    (covid / "masks/greymask.png").write_bytes(png)  # the X-ray itself given as its mask
    expected["COVID/masks/greymask.png"] = "binary mask"
    (covid / "images/emptymask.png").write_bytes(png)
    (covid / "masks/emptymask.png").write_bytes(_encode(np.zeros_like(mask), ".png"))
    expected["COVID/masks/emptymask.png"] = "empty mask"
    (root / "Normal/images").mkdir(parents=True)
    (root / "Normal/masks").mkdir(parents=True)
    shutil.copyfile(covid / "images/4fed5061.png", root / "Normal/images/4fed5061.png")
    (root / "Normal/masks/4fed5061.png").write_bytes(png_mask)
    expected["COVID/images/4fed5061.png"] = "duplicate stem"
    return expected


def _problem_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()[1:] if line.startswith("  ")]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_input_lists_all_problems_and_writes_nothing(
    examples_dir: Path, tmp_path: Path
) -> None:
    expected = make_bad_dataset(examples_dir, tmp_path / "data")
    out = tmp_path / "cache"
    with pytest.raises(BadInputError) as info:
        prepare(tmp_path / "data", out, _config(), workers=1, progress=False)
    err = info.value
    assert len(err.problems) == len(expected)
    lines = _problem_lines(str(err))
    assert len(lines) == len(expected)
    assert all(line.startswith(f"{tmp_path / 'data'}/") for line in lines)  # openable paths
    for key, word in expected.items():
        matching = [line for line in lines if key in line]
        assert len(matching) == 1, (key, lines)
        assert word in matching[0], (key, matching[0])
    assert "--skip-bad" in str(err)
    assert not (out / "prepare.yaml").exists()
    assert not (out / "images.npy").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_skip_bad_goes_on_and_lists_each(examples_dir: Path, tmp_path: Path) -> None:
    expected = make_bad_dataset(examples_dir, tmp_path / "data")
    out = tmp_path / "cache"
    data = prepare(tmp_path / "data", out, _config(), workers=1, progress=False, skip_bad=True)
    assert len(data.rows) == 11  # the 12 examples less the duplicated stem (both copies)
    assert "4fed5061" not in data.stems
    with open(out / "skipped.csv", newline="", encoding="utf-8") as fh:
        skipped = list(csv.DictReader(fh))
    assert len(skipped) == len(expected)
    for key, word in expected.items():
        matching = [row for row in skipped if key in row["file"]]
        assert len(matching) == 1 and word in matching[0]["problem"], (key, skipped)
    manifest = yaml.safe_load((out / "prepare.yaml").read_text())
    assert manifest["n_skipped"] == len(expected)
    # Fixed input rebuilds a clean cache and drops the stale list.
    shutil.rmtree(tmp_path / "data")
    shutil.copytree(examples_dir, tmp_path / "data")
    data = prepare(tmp_path / "data", out, _config(), workers=1, progress=False)
    assert len(data.rows) == 12
    assert not (out / "skipped.csv").exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_skip_bad_cache_not_reused_without_skip_bad(examples_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(examples_dir, tmp_path / "data")
    (tmp_path / "data/COVID/images/4fed5061.png").write_bytes(b"")
    out = tmp_path / "cache"
    prepare(tmp_path / "data", out, _config(), workers=1, progress=False, skip_bad=True)
    stamp = _stamp(out / "images.npy")
    prepare(tmp_path / "data", out, _config(), workers=1, progress=False, skip_bad=True)
    assert _stamp(out / "images.npy") == stamp  # same input, same choice: reused
    with pytest.raises(BadInputError, match="4fed5061.png: empty file"):
        prepare(tmp_path / "data", out, _config(), workers=1, progress=False)


def test_parallel_path_reports_bad_files(examples_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(examples_dir, tmp_path / "data")
    (tmp_path / "data/COVID/images/4fed5061.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="4fed5061.png: not an image"):
        prepare(tmp_path / "data", tmp_path / "cache", _config(), workers=2, progress=False)


def test_workers_that_keep_dying_are_one_line_naming_the_data(
    examples_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from lungseg.core.workers import WorkerDied, Workers

    def dies(self, function, *args):
        raise WorkerDied("a worker process died twice on one call")

    monkeypatch.setattr(Workers, "call", dies)  # as a decoder killed for its memory, twice
    with pytest.raises(LungsegError) as caught:
        prepare(examples_dir, tmp_path / "cache", _config(), workers=2, progress=False)
    assert caught.value.path == str(examples_dir)
    assert "worker process died twice" in caught.value.problem


def test_rgba_palette_and_16bit_files_in_a_dataset(examples_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    shutil.copytree(examples_dir / "COVID/masks", root / "masks")
    stems = sorted(p.stem for p in (examples_dir / "COVID/images").glob("*.png"))[:3]
    xrays = [cv2.imread(str(examples_dir / "COVID/images" / f"{s}.png"), 0) for s in stems]
    rgba = np.dstack([xrays[0]] * 3 + [np.full_like(xrays[0], 255)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    (root / "images" / f"{stems[0]}.png").write_bytes(buf.getvalue())
    palette = Image.fromarray(xrays[1], "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    (root / "images" / f"{stems[1]}.png").write_bytes(buf.getvalue())
    (root / "images" / f"{stems[2]}.png").write_bytes(
        _encode(xrays[2].astype(np.uint16) * 257, ".png")
    )
    for p in (root / "masks").iterdir():
        if p.stem not in stems:
            p.unlink()
    # v * 257 in 16 bits is v in 8 bits: scaled from the 16-bit range, not stretched
    data = prepare(root, tmp_path / "cache", _config(), workers=1, progress=False)
    assert [data.rows[data.stems.index(s)]["mode"] for s in stems] == ["RGBA", "RGB", "L;uint16"]
    for i, stem in enumerate(data.stems):
        expected = preprocess(xrays[stems.index(stem)], data.config.preprocess)
        np.testing.assert_array_equal(data.images[i], expected, err_msg=stem)
