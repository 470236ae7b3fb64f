"""Defect 8 (lungseg's part): Pillow's raw warning, a rejected checkpoint's cut message that
advised ``weights_only=False``, and ``train`` overwriting a ``config.yaml`` it did not write."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import yaml

from hostile import error_line
from png_files import png_declaring
from trained import lungseg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_no_raw_decompression_bomb_warning(tmp_path: Path, capsys) -> None:
    """11000 x 11000 is past Pillow's warning threshold (89 MP) and lungseg's limit (100 MP):
    lungseg's own line only."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(11000, 11000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = lungseg(["segment", bomb, "--out", tmp_path / "seg"], capsys)
    assert [str(w.message) for w in caught] == []
    error_line(code, err, "segment", "could be read")
    errors = (tmp_path / "seg" / "errors.csv").read_text()
    assert "decompression bomb" in errors


class _Payload:
    """What a malicious checkpoint would run on unpickling (it must never be run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["code", "module"])
def test_rejected_checkpoint_is_one_whole_sentence(tmp_path: Path, content: str, capsys) -> None:
    import torch

    path = tmp_path / "model.pt"
    marker = tmp_path / "ran"
    if content == "code":
        path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    else:  # a whole pickled module, as torch.save(model) writes
        torch.save(torch.nn.Conv2d(1, 1, 3), path)
    image = Path(__file__).resolve().parents[2] / "examples" / "COVID" / "images" / "1d435a4b.png"
    code, _, err = lungseg(["segment", image, "--out", tmp_path / "seg", "--weights", path], capsys)
    line = error_line(code, err, "segment", str(path), "not a lungseg checkpoint")
    assert "weights_only" not in line and "trust" not in line.lower()
    assert line.endswith("lungseg never unpickles objects from a file"), line
    assert not marker.exists()


def test_train_does_not_overwrite_a_config_it_did_not_write(
    tiny_run, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    mine = "# my own settings\nlearning: fast\n"
    (folder / "config.yaml").write_text(mine)
    argv = ["train", "--model", "unet", "--data", tiny_run.cache, "--out", folder, "--epochs", 1,
            "--n-filters", 4, "--threads", 1, "--device", "cpu"]  # fmt: skip
    code, _, err = lungseg(argv, capsys)
    error_line(code, err, "train", str(folder), "config.yaml", "not a lungseg run")
    assert (folder / "config.yaml").read_text() == mine
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_train_into_a_folder_of_other_files(tiny_run, tmp_path: Path, capsys) -> None:
    """Files lungseg does not write are no obstacle: they are left as they are."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("run for the paper\n")
    argv = ["train", "--model", "unet", "--data", tiny_run.cache, "--out", folder, "--epochs", 1,
            "--n-filters", 4, "--threads", 1, "--device", "cpu"]  # fmt: skip
    code, _, err = lungseg(argv, capsys)
    assert code == 0, err
    assert (folder / "notes.txt").read_text() == "run for the paper\n"
    assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["model"] == "unet"
