"""``lungseg train`` and ``train()``: real training on the shared data, run records, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lungseg.cli import main
from lungseg.core.config import from_dict
from lungseg.core.devices import cpu_has_native_bf16
from lungseg.core.errors import LungsegError
from lungseg.core.locking import LOCK_FILE
from lungseg.data.cache import load_cache, prepare
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.evaluation.metrics import Confusion, dice_score
from lungseg.evaluation.plots import HISTORY_COLUMNS
from lungseg.training import TrainConfig, load_checkpoint, model_from_checkpoint, train

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "covid-cxr"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"needs the shared dataset at {DATA}"),
]
#: One thread: the CPUs are shared, and OpenMP threads competing for them are far slower.
FAST = ["--threads", "1"]


def run_cli(*args: object) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def _cache(folder: Path, out: Path, size: int) -> Path:
    config = PrepareConfig(PreprocessConfig.from_preset("seed", size))
    prepare(folder, out, config, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def cache64(tmp_path_factory) -> Path:
    """The whole shared dataset at 64x64 (355 images; about 2 s to build)."""
    return _cache(DATA, tmp_path_factory.mktemp("cache64"), 64)


@pytest.fixture(scope="module")
def subset(covid_subset30: Path) -> Path:
    """A copy of 30 image/mask pairs of the shared dataset."""
    return covid_subset30


@pytest.fixture(scope="module")
def cache32(subset, tmp_path_factory) -> Path:
    return _cache(subset, tmp_path_factory.mktemp("cache32"), 32)


def _val_dice(model: torch.nn.Module, cache: Path) -> float:
    data = load_cache(cache)
    idx = data.indices("val")
    x = torch.from_numpy(data.images[idx]).float().div(255).unsqueeze(1)
    with torch.no_grad():
        pred = (model(x) > 0).squeeze(1).numpy()
    target = data.masks[idx].astype(bool)
    tp = (pred & target).sum((1, 2))
    fp = (pred & ~target).sum((1, 2))
    fn = (~pred & target).sum((1, 2))
    return float(dice_score(Confusion(tp, fp, fn, np.zeros_like(tp))).mean())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "lr"), [("unet", "1e-3"), ("fcn", "3e-3"), ("deeplabv3", "2e-3")]
)
def test_each_model_learns_beyond_trivial_masks(cache64, tmp_path, capsys, model, lr):
    out = tmp_path / model
    code = run_cli(
        "train", "--model", model, "--data", cache64, "--out", out, "--epochs", 2, "--lr", lr, *FAST
    )
    assert code == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "epoch 2/2  train_loss" in captured.err  # one line per epoch off a terminal
    assert f"trained {model}" in captured.out

    masks = load_cache(cache64)
    val = masks.masks[masks.indices("val")].astype(bool)
    lung = val.sum((1, 2))
    all_lung_dice = float(np.mean(2 * lung / (lung + val[0].size)))  # predict lung everywhere
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == HISTORY_COLUMNS and len(rows) == 2
    best_dice = max(float(r["val_dice"]) for r in rows)
    assert best_dice > all_lung_dice + 0.1 > 0.1  # and above all-background (Dice 0)

    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "best.pt",
        "last.pt",
        "history.csv",
        "curves.png",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "best.pt")
    rebuilt = model_from_checkpoint(ckpt)
    assert summary["params"] == sum(p.numel() for p in rebuilt.parameters())
    assert summary["epochs"] == 2 and summary["train_seconds"] > 0
    assert summary["images_per_second"] > 0
    assert ckpt["epoch"] == ckpt["best_epoch"] == summary["best_epoch"]
    assert summary["precision"] == ("bf16 autocast" if cpu_has_native_bf16() else "float32")
    assert ckpt["size"] == 64
    assert from_dict(PreprocessConfig, ckpt["preprocess"]).preset == "seed"
    # The rebuilt best model scores on the validation images what training recorded for it
    # (up to a few pixels whose logit is ~0: batching and memory layout change the rounding).
    recorded = ckpt["history"][ckpt["best_epoch"] - 1]["val_dice"]
    assert _val_dice(rebuilt, cache64) == pytest.approx(recorded, abs=1e-4)
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert from_dict(TrainConfig, settings["train"]).lr == float(lr)
    # The run's data settings are its prepare section, which rebuilds the same cache.
    prepared = from_dict(PrepareConfig, settings["prepare"])
    assert prepared == load_cache(cache64).config and prepared.preprocess.preset == "seed"


@pytest.mark.parametrize("amp", [True, False])
def test_amp_trains_in_bf16_on_a_cpu_that_has_it(cache32, tmp_path, amp):
    """Training steps run in bf16 autocast where the CPU computes bf16 natively; validation, and
    every step under ``amp=False``, in float32."""
    if amp and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AMX or AVX512-BF16): amp trains in float32")
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            seen[module.training].add(output.dtype)

    config = TrainConfig(model="fcn", n_filters=4, epochs=1, batch_size=4, threads=1, amp=amp)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train(config, cache32, tmp_path / "run", progress=False)
    finally:
        handle.remove()
    assert seen[True] == ({torch.bfloat16} if amp else {torch.float32})  # training steps
    assert seen[False] == {torch.float32}  # validation
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == ("bf16 autocast" if amp else "float32")


def test_library_options_and_run_result(cache32, tmp_path):
    config = TrainConfig(
        model="fcn",
        n_filters=4,
        epochs=2,
        batch_size=4,
        loss="bce_dice",
        schedule="cosine",
        select="dice",
        threads=1,
    )
    threads = torch.get_num_threads()
    result = train(config, cache32, tmp_path / "run", progress=False)
    assert torch.get_num_threads() == threads  # the thread setting is restored, not leaked
    assert result.epochs == 2 and len(result.history) == 2
    assert result.best_metric["name"] == "val_dice"
    best_row = result.history[result.best_epoch - 1]
    assert result.best_metric["value"] == max(r["val_dice"] for r in result.history)
    assert best_row["val_dice"] == result.best_metric["value"]
    assert result.history[1]["lr"] < result.history[0]["lr"] == 1e-3  # cosine, per step
    assert not result.model.training
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    last = load_checkpoint(result.last_checkpoint)
    assert last["train_config"]["loss"] == "bce_dice"
    assert last["scheduler"] is not None and last["epoch"] == 2


def test_source_is_prepared_next_to_the_run(subset, tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    args = [
        "train",
        "--model",
        "fcn",
        "--n-filters",
        4,
        "--data",
        subset,
        "--size",
        32,
        "--preprocess",
        "none",
        "--epochs",
        1,
        "--workers",
        1,
        *FAST,
    ]
    assert run_cli(*args, "--out", out) == 0, capsys.readouterr().err
    caches = list((tmp_path / "runs" / ".cache").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith(f"{subset.name}-32-none-")
    prepared = load_cache(caches[0])
    assert prepared.size == 32 and prepared.config.preprocess.preset == "none"
    # --cache puts it elsewhere.
    assert run_cli(*args, "--out", tmp_path / "b", "--cache", tmp_path / "mine") == 0
    assert load_cache(tmp_path / "mine").size == 32


def test_yaml_then_flags_resolution(tmp_path):
    from lungseg.training.config import resolve_run

    config = tmp_path / "settings.yaml"
    config.write_text("train:\n  epochs: 7\n  lr: 0.01\n  augment: false\nprepare: {}\n")
    run = tmp_path / "run"
    resolved = resolve_run(run, {"lr": 0.5, "model": "fcn"}, {}, config, "data").config
    assert (resolved.epochs, resolved.lr, resolved.model) == (7, 0.5, "fcn")
    assert resolved.augment.enabled is False and resolved.batch_size == 16
    config.write_text("train:\n  epoch: 7\n")
    with pytest.raises(LungsegError, match="unknown setting.*epoch.*settings.yaml"):
        resolve_run(run, {}, {}, config, "data")
    config.write_text("train:\n  model: nope\n")
    with pytest.raises(LungsegError, match="unknown model 'nope'; valid: deeplabv3, fcn, unet"):
        resolve_run(run, {}, {}, config, "data")
    config.write_text("trian:\n  model: unet\n")
    with pytest.raises(LungsegError, match="settings.yaml: unknown section.*trian"):
        resolve_run(run, {}, {}, config, "data")


def test_a_setting_given_two_ways_is_refused(cache32, tmp_path, capsys):
    """--n-filters and --model-arg n_filters=... would silently train another model than the
    run's config.yaml says: refused in one line naming both."""
    out = tmp_path / "run"
    code = run_cli(
        "train", "--model", "unet", "--data", cache32, "--out", out,
        "--n-filters", 16, "--model-arg", "n_filters=4",
    )  # fmt: skip
    _assert_error(capsys, code, "n_filters=4", "--model-arg", "--n-filters")
    assert not out.exists()
    with pytest.raises(LungsegError, match="dropout=0.*--dropout"):
        TrainConfig(model_kwargs={"dropout": 0})


def _assert_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    flat = " ".join(err.split())
    for fragment in fragments:
        assert fragment in flat, err


def test_unknown_model(cache32, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "--model", "resnet", "--data", cache32, "--out", out)
    _assert_error(capsys, code, "resnet", "unet")
    with pytest.raises(LungsegError, match="unknown model 'resnet'; valid: deeplabv3, fcn, unet"):
        TrainConfig(model="resnet")
    assert not out.exists()


def test_size_the_model_cannot_take(subset, tmp_path, capsys):
    cache40 = _cache(subset, tmp_path / "cache40", 40)
    out = tmp_path / "run"
    code = run_cli("train", "--model", "unet", "--data", cache40, "--out", out, *FAST)
    _assert_error(capsys, code, "unet cannot take 40x40", "divisible by 16", "--size 32 or 48")
    assert not out.exists()


def test_empty_training_split(cache32, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(cache32, cache)
    split = cache / "split.csv"
    with open(split, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["split"] = "val" if row["split"] == "train" else row["split"]
    with open(split, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "run"
    code = run_cli("train", "--model", "fcn", "--data", cache, "--out", out, *FAST)
    _assert_error(capsys, code, str(cache), "training split is empty", "train 0")
    assert not out.exists()


def test_cache_built_with_other_settings(cache32, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "--model", "fcn", "--data", cache32, "--out", out, "--size", 64)
    _assert_error(capsys, code, str(cache32), "size: asked 64, cache has 32")
    code = run_cli(
        "train", "--model", "fcn", "--data", cache32, "--out", out, "--preprocess", "none"
    )
    _assert_error(capsys, code, "other settings", "preprocess.clahe: asked False, cache has True")
    assert not out.exists()


def test_missing_model_or_data(cache32, tmp_path, capsys):
    _assert_error(
        capsys, run_cli("train", "--data", cache32, "--out", tmp_path / "r"), "--model is required"
    )
    _assert_error(
        capsys, run_cli("train", "--model", "fcn", "--out", tmp_path / "r"), "--data is required"
    )
    _assert_error(
        capsys, run_cli("train", "--out", tmp_path / "r", "--resume"), "nothing to resume"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_asked_without_cuda(cache32, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "--model", "fcn", "--data", cache32, "--out", out, "--device", "cuda")
    _assert_error(capsys, code, "no CUDA device is available", "--device cpu")
    assert not out.exists()


def test_existing_run_bad_resume_and_changed_settings(cache32, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", "fcn", "--n-filters", 4, "--data", cache32, "--out", out, *FAST]
    assert run_cli(*base, "--epochs", 1) == 0
    # Every file but the lock's note of who held it last stays as it was.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_FILE}

    _assert_error(capsys, run_cli(*base, "--epochs", 1), "already holds a training run", "--resume")
    _assert_error(
        capsys,
        run_cli(*base, "--epochs", 2, "--lr", 0.1, "--resume"),
        "cannot resume with other settings",
        "lr: run has 0.001, asked 0.1",
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_FILE} == before

    last = out / "last.pt"
    last.write_bytes(before["last.pt"][:4096])
    _assert_error(
        capsys, run_cli("train", "--out", out, "--resume"), str(last), "cannot read checkpoint"
    )
    torch.save({"state": torch.zeros(2)}, last)
    _assert_error(
        capsys, run_cli("train", "--out", out, "--resume"), str(last), "not a lungseg checkpoint"
    )


def test_model_args_reach_the_model_and_the_checkpoint(cache32, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", "unet", "--n-filters", 4, "--data", cache32, "--out", out, *FAST]
    code = run_cli(*base, "--epochs", 1, "--model-arg", "downsample=2", "--dropout", 0)
    assert code == 0, capsys.readouterr().err
    kwargs = load_checkpoint(out / "best.pt")["model"]["kwargs"]
    assert kwargs["downsample"] == 2 and kwargs["dropout"] == 0
    # A resumed run keeps them without repeating the flag.
    assert run_cli("train", "--out", out, "--resume", "--epochs", 2, *FAST) == 0
    assert load_checkpoint(out / "last.pt")["model"]["kwargs"]["downsample"] == 2

    _assert_error(capsys, run_cli(*base, "--model-arg", "downsample"), "KEY=VALUE", "downsample")
    _assert_error(
        capsys,
        run_cli("train", "--model", "unet", "--data", cache32, "--out", tmp_path / "b",
                "--model-arg", "stride=2"),
        "stride", "downsample",
    )  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_a_second_training_on_the_same_run_directory_is_refused(cache32, tmp_path, capsys):
    """Two ``lungseg train`` into one --out used to both report success with one run left; the
    second is now refused while the first is alive, and resumes once it is gone (kill -9)."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["--data", cache32, "--out", out, "--n-filters", 4, *FAST]
    first = subprocess.Popen(
        [sys.executable, "-m", "lungseg", "train", "--model", "fcn", "--epochs", "200",
         *map(str, args)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in first.stderr:  # the first epoch line: training is under way
            if line.startswith("epoch 1/"):
                break
        code = run_cli("train", "--model", "unet", "--epochs", 2, *args)
        _assert_error(capsys, code, str(out), "in use by another lungseg process", "lungseg train")
        code = run_cli("train", "--out", out, "--resume", *FAST)
        _assert_error(capsys, code, "in use by another lungseg process")
    finally:
        first.kill()
        first.wait()
    time.sleep(0.1)
    assert run_cli("train", "--out", out, "--resume", "--epochs", 2, *FAST) == 0
    assert load_checkpoint(out / "last.pt")["model"]["name"] == "fcn"


def test_excluded_images_stay_out_of_training_only(cache32, tmp_path, capsys):
    data = load_cache(cache32)
    train_rows = [data.rows[i] for i in data.indices("train")]
    val_row = data.rows[data.indices("val")[0]]
    # One by stem, one by image key, and a validation image (scored as it is, not left out).
    names = [train_rows[0]["stem"], train_rows[1]["image_key"], val_row["stem"]]
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"train": {"exclude": names}}))
    out = tmp_path / "run"
    base = ["train", "--model", "fcn", "--n-filters", 4, "--data", cache32, *FAST]
    code = run_cli(*base, "--out", out, "--epochs", 1, "--config", config)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    said = " ".join((captured.out + captured.err).split())
    assert "2 left out of training: train.exclude" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == len(train_rows) - 2
    assert summary["n_val"] == len(data.indices("val"))
    assert load_checkpoint(out / "best.pt")["train_config"]["exclude"] == names

    config.write_text(yaml.safe_dump({"train": {"exclude": [names[0], "no-such-film"]}}))
    code = run_cli(*base, "--out", tmp_path / "typo", "--epochs", 1, "--config", config)
    _assert_error(capsys, code, "train.exclude names 1 image(s)", "'no-such-film'", str(cache32))
    assert not (tmp_path / "typo").exists()

    everything = [row["stem"] for row in train_rows]
    config.write_text(yaml.safe_dump({"train": {"exclude": everything}}))
    code = run_cli(*base, "--out", tmp_path / "none", "--epochs", 1, "--config", config)
    _assert_error(capsys, code, "train.exclude leaves no training image", str(cache32))
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_a_run_starts_from_given_weights_and_records_them(cache32, subset, tmp_path, capsys):
    from lungseg.models.identity import file_digest

    base = ["train", "--model", "fcn", "--n-filters", 4, "--data", cache32, "--epochs", 1, *FAST]
    assert run_cli(*base, "--out", tmp_path / "a") == 0
    start = load_checkpoint(tmp_path / "a" / "best.pt")
    capsys.readouterr()
    # A learning rate too small to move a weight: the fine-tuned run ends where it started.
    code = run_cli(*base, "--out", tmp_path / "b", "--init", tmp_path / "a", "--lr", 1e-12)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    digest = file_digest(tmp_path / "a" / "best.pt")
    said = " ".join((captured.out + captured.err).split())
    assert f"from {tmp_path / 'a'} (sha256 {digest[:12]})" in said
    tuned = load_checkpoint(tmp_path / "b" / "best.pt")
    assert tuned["init"] == {"from": str(tmp_path / "a"), "sha256": digest}
    assert tuned["train_config"]["init"] == str(tmp_path / "a")
    weights = [k for k, v in start["state_dict"].items() if v.is_floating_point()]
    weights = [k for k in weights if "running" not in k]  # batch norm's statistics do move
    for key in weights:
        assert torch.allclose(tuned["state_dict"][key], start["state_dict"][key], atol=1e-6), key
    # The same run from random weights is elsewhere: the test can tell the two apart.
    assert run_cli(*base, "--out", tmp_path / "c", "--lr", 1e-12, "--seed", 1) == 0
    fresh = load_checkpoint(tmp_path / "c" / "best.pt")["state_dict"]
    assert not all(torch.allclose(fresh[k], start["state_dict"][k], atol=1e-6) for k in weights)

    capsys.readouterr()
    code = run_cli(*base, "--out", tmp_path / "wide", "--init", tmp_path / "a", "--n-filters", 8)
    _assert_error(capsys, code, "does not fit this run's model: n_filters: weights 4, run 8;")
    assert not (tmp_path / "wide").exists()
    clahe = tmp_path / "clahe"
    prepare(subset, clahe, PrepareConfig(PreprocessConfig.from_preset("clahe", 32)), workers=1,
            progress=False)  # fmt: skip
    other = ["train", "--model", "fcn", "--n-filters", 4, "--data", clahe, "--epochs", 1, *FAST]
    code = run_cli(*other, "--out", tmp_path / "p", "--init", tmp_path / "a")
    _assert_error(capsys, code, "was trained on images preprocessed with seed (", "clahe (",
                  "--preprocess seed")  # fmt: skip
    code = run_cli(*base, "--out", tmp_path / "e", "--init", "ensemble")
    _assert_error(capsys, code, "train.init 'ensemble'", "not an ensemble")
    code = run_cli(*base, "--out", tmp_path / "n", "--init", tmp_path / "nothing")
    _assert_error(capsys, code, "model not found", str(tmp_path / "nothing"))
