"""``lungseg prepare``: the counts line, the cache, settings precedence, errors without traces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lungseg.cli import main
from lungseg.data.cache import load_cache
from lungseg.data.settings import prepare_settings

COUNTS_LINE = (
    "prepared {n} images at {s}x{s} in {out} (unknown convention) "
    "(train {train}, val {val}, test {test})"
)


def _lungseg(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    out, err = capsys.readouterr()
    return (0 if code is None else int(code)), out, err


def _bad_copy(examples_dir: Path, root: Path) -> dict[str, str]:
    """The examples with a corrupt image, a zero-byte image and an image without its mask."""
    shutil.copytree(examples_dir, root)
    covid = root / "COVID"
    (covid / "images/4fed5061.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (covid / "images/82a78c13.png").write_bytes(b"")
    (covid / "masks/86d19bba.png").unlink()
    return {
        "COVID/images/4fed5061.png": "corrupt",
        "COVID/images/82a78c13.png": "empty",
        "COVID/images/86d19bba.png": "missing mask",
    }


def test_prepare_examples(examples_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cache"
    argv = ["prepare", "--data", str(examples_dir), "--out", str(out), "--size", "64"]
    code, stdout, stderr = _lungseg([*argv, "--workers", "1"], capsys)
    assert code == 0, stderr
    data = load_cache(out)
    assert data.images.shape == (12, 64, 64)
    assert data.config.preprocess.preset == "seed"
    counts = {s: len(data.indices(s)) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 12 and min(counts.values()) >= 1
    assert stdout.strip() == COUNTS_LINE.format(n=12, s=64, out=out, **counts)
    for name in ("images.npy", "masks.npy", "split.csv", "prepare.yaml"):
        assert (out / name).is_file()
    # Again: the cache is reused and the same line printed.
    stamp = (out / "images.npy").stat().st_mtime_ns
    code, again, _ = _lungseg([*argv, "--workers", "1"], capsys)
    assert code == 0 and again == stdout
    assert (out / "images.npy").stat().st_mtime_ns == stamp


def test_bad_input_exit_2_with_every_problem(examples_dir: Path, tmp_path: Path, capsys) -> None:
    expected = _bad_copy(examples_dir, tmp_path / "data")
    out = tmp_path / "cache"
    argv = ["prepare", "--data", str(tmp_path / "data"), "--out", str(out), "--size", "64"]
    code, stdout, stderr = _lungseg([*argv, "--workers", "1"], capsys)
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    assert lines[start] == "error: 3 problem(s) found in the input:"
    assert len(lines) == start + 1 + len(expected) + 1  # the problems, then the hint
    for key, word in expected.items():
        matching = [line for line in lines if key in line]
        assert len(matching) == 1 and word in matching[0], (key, stderr)
    assert "--skip-bad" in stderr
    assert not (out / "prepare.yaml").exists()

    code, stdout, stderr = _lungseg([*argv, "--workers", "1", "--skip-bad"], capsys)
    assert code == 0, stderr
    assert f"prepared 9 images at 64x64 in {out}" in stdout
    assert f"skipped files listed in {out / 'skipped.csv'}" in stdout
    assert len((out / "skipped.csv").read_text().splitlines()) == 1 + len(expected)


def test_console_script_bad_input(examples_dir: Path, tmp_path: Path) -> None:
    _bad_copy(examples_dir, tmp_path / "data")
    script = Path(sys.executable).parent / "lungseg"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lungseg"]
    result = subprocess.run(
        [*command, "prepare", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c")]
        + ["--size", "64", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "4fed5061.png: corrupt" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--preprocess", "sharpen"], ["sharpen", "seed", "clahe", "none"]),
        (["--size", "8"], ["size 8"]),
        (["--val", "1.5"], ["split fractions"]),
    ],
)
def test_bad_flags_exit_2(examples_dir: Path, tmp_path: Path, capsys, flags, words) -> None:
    argv = ["prepare", "--data", str(examples_dir), "--out", str(tmp_path / "c"), "--workers", "1"]
    code, _, stderr = _lungseg(argv + flags, capsys)
    assert code == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1  # refused before decoding anything
    for word in words:
        assert word in stderr


def test_missing_data_folder(tmp_path: Path, capsys) -> None:
    absent = tmp_path / "absent"
    code, _, stderr = _lungseg(["prepare", "--data", str(absent), "--out", str(tmp_path)], capsys)
    assert code == 2
    assert stderr.strip() == f"error: {absent}: data folder not found"


def test_unknown_yaml_setting(examples_dir: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("prepare:\n  val_share: 0.3\n")
    argv = ["prepare", "--data", str(examples_dir), "--out", str(tmp_path / "c")]
    code, _, stderr = _lungseg([*argv, "--config", str(config)], capsys)
    assert code == 2 and "val_share" in stderr and "val_fraction" in stderr


def _yaml(tmp_path: Path, prepare: dict) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"prepare": prepare}))
    return path


def test_settings_defaults() -> None:
    settings = prepare_settings()
    assert (settings.val_fraction, settings.test_fraction, settings.seed) == (0.2, 0.1, 0)
    assert settings.preprocess.size == 256 and settings.preprocess.preset == "seed"


def test_yaml_kept_where_no_flag_given(tmp_path: Path) -> None:
    config = _yaml(
        tmp_path,
        {
            "val_fraction": 0.3,
            "seed": 4,
            "preprocess": {"size": 128, "preset": "clahe", "clahe_clip_limit": 3.0},
        },
    )
    settings = prepare_settings(config=config)
    assert (settings.val_fraction, settings.test_fraction, settings.seed) == (0.3, 0.1, 4)
    pre = settings.preprocess
    assert (pre.size, pre.preset, pre.gradient, pre.clahe_clip_limit) == (128, "clahe", False, 3.0)


def test_flags_win_over_yaml(tmp_path: Path) -> None:
    config = _yaml(
        tmp_path,
        {"val_fraction": 0.3, "seed": 4, "preprocess": {"size": 128, "clahe_clip_limit": 3.0}},
    )
    settings = prepare_settings(preprocess="none", size=64, val=0.25, seed=1, config=config)
    assert (settings.val_fraction, settings.seed) == (0.25, 1)
    pre = settings.preprocess
    assert (pre.size, pre.preset, pre.blur, pre.gradient, pre.clahe) == (64, "none", *[False] * 3)
    assert pre.clahe_clip_limit == 3.0  # a parameter the flags do not touch stays the YAML's


def test_cli_uses_yaml_and_flags(examples_dir: Path, tmp_path: Path, capsys) -> None:
    config = _yaml(tmp_path, {"seed": 3, "preprocess": {"size": 32, "preset": "none"}})
    out = tmp_path / "cache"
    argv = ["prepare", "--data", str(examples_dir), "--out", str(out), "--workers", "1"]
    code, stdout, stderr = _lungseg([*argv, "--config", str(config), "--size", "48"], capsys)
    assert code == 0, stderr
    data = load_cache(out)
    assert (data.size, data.config.seed, data.config.preprocess.preset) == (48, 3, "none")
    assert "at 48x48" in stdout


def test_prepare_several_folders_at_once(tmp_path: Path, capsys) -> None:
    """Two sources in the database's layout, one with RGB masks and no patient ids, one with a
    METADATA.csv: one cache, each image's key under its folder's name, patients kept apart."""
    import cv2
    import numpy as np

    from lungseg.data.cache import load_cache

    image = np.full((32, 32), 90, np.uint8)
    image[8:24, 4:14] = image[8:24, 18:28] = 30
    gray = np.where(image < 60, 255, 0).astype(np.uint8)
    for name, cls, mask in (("adults", "Normal", gray),
                            ("children", "Viral Pneumonia", cv2.merge([gray] * 3))):  # fmt: skip
        for kind, pixels in (("images", image), ("masks", mask)):
            (tmp_path / name / cls / kind).mkdir(parents=True)
            for i in range(4):
                cv2.imwrite(str(tmp_path / name / cls / kind / f"{name}-{i}.png"), pixels)
    (tmp_path / "adults" / "METADATA.csv").write_text(
        "stem,class,patient_id\n" + "".join(f"adults-{i},Normal,p{i // 2}\n" for i in range(4))
    )
    out = tmp_path / "cache"
    argv = ["prepare", "--data", str(tmp_path / "adults"), "--data", str(tmp_path / "children"),
            "--out", str(out), "--size", "32", "--workers", "1"]  # fmt: skip
    code, _, stderr = _lungseg(argv, capsys)
    assert code == 0, stderr
    data = load_cache(out)
    assert (
        sorted(r["image_key"].split("/")[0] for r in data.rows) == ["adults"] * 4 + ["children"] * 4
    )
    patients = {r["stem"]: r["patient_id"] for r in data.rows}
    assert patients["adults-0"] == patients["adults-1"] == "adults:p0"
    assert patients["children-0"] == "image:children-0"
    assert data.masks.max() == 1 and data.masks[-1].sum() > 0  # RGB masks decoded
