"""Issue 24, item 21: a settings file with a value of the wrong type or range is refused with one
line naming the file and the key, before anything runs (no traceback, no run that records
``epochs: true``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile import error_line
from trained import lungseg

CASES = [
    ("train", "epochs", "ten", "a whole number"),
    ("train", "epochs", "2.7", "a whole number"),
    ("train", "epochs", "true", "a whole number"),
    ("train", "lr", "[0.1]", "a finite number"),
    ("train", "lr", ".nan", "a finite number"),
    ("train", "seed", "abc", "a whole number"),
    ("train", "batch_size", "1e20", "a whole number"),  # YAML 1.1: a string
    ("train", "batch_size", "100000000000000000000", "between"),
    ("train", "amp", "yes please", "true or false"),
    ("train", "augment", "{rotation: lots}", "a finite number"),
    ("prepare", "val_fraction", '"0.2"', "a finite number"),
    ("prepare", "seed", "-1", "between"),
    ("prepare", "preprocess", "{size: 1000000}", "between"),
]


@pytest.mark.parametrize(("section", "key", "value", "words"), CASES)
def test_a_wrong_value_is_one_line_naming_file_and_key(
    examples_dir: Path, tmp_path: Path, capsys, section: str, key: str, value: str, words: str
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"{section}:\n  model: unet\n  {key}: {value}\n" if section == "train"
                      else f"{section}:\n  {key}: {value}\n")  # fmt: skip
    if section == "train":
        argv = ["train", "--config", config, "--data", examples_dir, "--out", tmp_path / "run"]
    else:
        argv = ["prepare", "--config", config, "--data", examples_dir, "--out", tmp_path / "c"]
    code, _, err = lungseg(argv, capsys)
    shown_key = key if not value.startswith("{") else value[1:].split(":")[0]
    error_line(code, err, section, str(config), shown_key, words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()
