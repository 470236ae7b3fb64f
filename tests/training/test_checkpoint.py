"""Checkpoints: safe loading, clear errors on bad files, rebuilding the model."""

from __future__ import annotations

import pytest
import torch

from lungseg.core.config import from_dict, to_dict
from lungseg.core.errors import LungsegError
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.inference.postprocessing import PostprocessConfig
from lungseg.models import create_model
from lungseg.models.checkpoint import plain_state_dict
from lungseg.training import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)


class Payload:
    """An arbitrary object: unpickling one could run code, so checkpoints must not hold it."""


def _checkpoint(name: str = "fcn") -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_model(name, n_filters=4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 1, 32, 32)).mean().backward()
    optimizer.step()
    ckpt = {
        "model": {"name": name, "kwargs": to_dict(model.init_kwargs)},
        "size": 32,
        "preprocess": to_dict(PreprocessConfig.from_preset("seed", 32)),
        "postprocess": to_dict(PostprocessConfig.preset("seed")),
        "epoch": 1,
        "best_epoch": 1,
        "best_metric": {"name": "val_loss", "value": 0.5},
        "metrics": {"epoch": 1, "val_loss": 0.5},
        "history": [{"epoch": 1, "val_loss": 0.5}],
        "state_dict": plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "train_config": {"model": name},
    }
    return model, ckpt


@pytest.mark.parametrize("name", ["unet", "fcn", "deeplabv3"])
def test_round_trip_loads_with_weights_only_and_rebuilds_the_model(tmp_path, name):
    model, ckpt = _checkpoint(name)
    path = tmp_path / "best.pt"
    save_checkpoint(path, ckpt)

    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["format"] == CHECKPOINT_FORMAT and raw["lungseg_version"]
    loaded = load_checkpoint(path)
    rebuilt = model_from_checkpoint(loaded)
    assert not rebuilt.training
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert from_dict(PreprocessConfig, loaded["preprocess"]).size == 32
    assert from_dict(PostprocessConfig, loaded["postprocess"]) == PostprocessConfig.preset("seed")
    fresh = torch.optim.Adam(rebuilt.parameters())
    fresh.load_state_dict(loaded["optimizer"])


def test_corrupt_file_is_a_clear_error(tmp_path):
    _, ckpt = _checkpoint()
    path = tmp_path / "last.pt"
    save_checkpoint(path, ckpt)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LungsegError, match="cannot read checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    path.write_text("not a checkpoint at all")
    with pytest.raises(LungsegError, match="last.pt"):
        load_checkpoint(path)
    path.write_text("junk\n")  # PyTorch's legacy unpickler raised a KeyError on these bytes
    with pytest.raises(LungsegError, match="last.pt: cannot read checkpoint .*: KeyError"):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(LungsegError, match="not a lungseg checkpoint") as err:
        load_checkpoint(foreign)
    assert "foreign.pt" in str(err.value)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Payload()}, unsafe)
    with pytest.raises(LungsegError, match="unsafe.pt"):
        load_checkpoint(unsafe)


def test_newer_format_and_missing_file(tmp_path):
    _, ckpt = _checkpoint()
    path = tmp_path / "new.pt"
    save_checkpoint(path, {**ckpt, "format": CHECKPOINT_FORMAT + 1})
    with pytest.raises(LungsegError, match="newer than this lungseg reads"):
        load_checkpoint(path)
    with pytest.raises(LungsegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
