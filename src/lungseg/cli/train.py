"""``lungseg train``: train a segmentation model into a run directory."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from lungseg.cli import app
from lungseg.models import list_models
from lungseg.preprocessing import PREPROCESS_PRESETS
from lungseg.training.engine import DEVICES, LOSSES, SCHEDULES, SELECT


def _choices(name: str, values: Any) -> type[enum.Enum]:
    return enum.Enum(name, {v: v for v in values}, type=str)


ModelName = _choices("ModelName", list_models())
Preset = _choices("Preset", PREPROCESS_PRESETS)
Device = _choices("Device", DEVICES)
Loss = _choices("Loss", LOSSES)
Schedule = _choices("Schedule", SCHEDULES)
Select = _choices("Select", SELECT)


def train_settings(flags: dict[str, Any], config: Path | None, resume_from: Path | None):
    """Resolve training settings: defaults (or the resumed run's) -> YAML ``train:`` -> flags.

    Args:
        flags: settings given on the command line (``None``: not given).
        config: a YAML file whose ``train:`` section holds settings.
        resume_from: the ``last.pt`` of a run being resumed; its settings replace the defaults,
            so a resumed run needs no flags repeated.
    """
    from lungseg.config import from_dict, load_yaml, merge, to_dict
    from lungseg.errors import LungsegError
    from lungseg.training import TrainConfig, load_checkpoint

    resolved = to_dict(TrainConfig())
    if resume_from is not None:
        resolved = merge(resolved, load_checkpoint(resume_from)["train_config"])
    if config is not None:
        section = load_yaml(config).get("train") or {}
        if not isinstance(section, dict):
            raise LungsegError("the 'train' section must be a mapping of settings", config)
        resolved = merge(resolved, section)
        from_dict(TrainConfig, resolved, f"{config} (train section)")
    resolved = merge(resolved, flags)
    return from_dict(TrainConfig, resolved, "train settings")


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["downsample=2", "skips=false"]`` -> ``{"downsample": 2, "skips": False}`` (YAML)."""
    import yaml

    from lungseg.errors import LungsegError

    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LungsegError(f"--model-arg takes KEY=VALUE, got {item!r}")
        try:
            kwargs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LungsegError(f"--model-arg {item!r}: the value is not a YAML scalar") from None
    return kwargs


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Run directory to write (or to resume).")],
    model: Annotated[ModelName | None, typer.Option(help="Model architecture.")] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Prepared cache folder, or a dataset folder / az://CONTAINER/PREFIX to prepare "
            "first. With --resume, defaults to the run's cache."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs in total.", show_default="50")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per step (per process).", show_default="16")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam learning rate.", show_default="1e-3")
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            help="Working size; a cache built at another size is refused.",
            show_default="the cache's, 256 for a source",
        ),
    ] = None,
    preprocess: Annotated[
        Preset | None,
        typer.Option(
            help="Preprocessing preset; a cache built otherwise is refused.",
            show_default="the cache's, seed for a source",
        ),
    ] = None,
    device: Annotated[
        Device | None, typer.Option(help="Where to train.", show_default="auto")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    loss: Annotated[
        Loss | None, typer.Option(help="bce, or bce + soft Dice.", show_default="bce")
    ] = None,
    schedule: Annotated[
        Schedule | None, typer.Option(help="Learning-rate schedule, per step.", show_default="none")
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Augment training batches.", show_default="augment"
        ),
    ] = None,
    select: Annotated[
        Select | None,
        typer.Option(help="Best weights by validation loss or Dice.", show_default="loss"),
    ] = None,
    n_filters: Annotated[
        int | None, typer.Option(help="Model base width.", show_default="16")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout.", show_default="0.1")] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE, repeatable: a further constructor argument of the model, e.g. "
            "downsample=2 (unet), depth=4 (fcn) or skips=true (fcn, deeplabv3); "
            "'lungseg models' lists them.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", show_default="0")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes preparing a source.", show_default="one per core")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per process.", show_default="physical cores")
    ] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp",
            help="bf16 autocast on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16); "
            "--no-amp trains in float32 everywhere.",
            show_default="amp",
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="Where to prepare a source.", show_default="OUT/../.cache/NAME-SIZE-..."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings file (train: section).")
    ] = None,
) -> None:
    """Train a segmentation model; writes config.yaml, best.pt, last.pt, history.csv, curves.png."""
    from lungseg.config import load_yaml
    from lungseg.data.cache import is_cache
    from lungseg.errors import LungsegError
    from lungseg.training import train

    last = out / "last.pt"
    flags = {
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "size": size,
        "preprocess": preprocess,
        "device": device,
        "loss": loss,
        "schedule": schedule,
        "augment": None if augment is None else {"enabled": augment},
        "select": select,
        "n_filters": n_filters,
        "dropout": dropout,
        "model_kwargs": parse_model_args(model_arg) if model_arg else None,
        "seed": seed,
        "workers": workers,
        "threads": threads,
        "compile": compile,
        "amp": amp,
    }
    flags = {k: v.value if isinstance(v, enum.Enum) else v for k, v in flags.items()}
    resuming = resume and last.is_file()
    if resume and not resuming and not (out / "config.yaml").is_file():
        raise LungsegError("nothing to resume: no last.pt (start a run without --resume)", out)
    settings = train_settings(flags, config, last if resuming else None)
    if model is None and not resuming:
        in_yaml = config is not None and "model" in (load_yaml(config).get("train") or {})
        if not in_yaml:
            raise LungsegError(f"--model is required; valid models: {', '.join(list_models())}")
    if data is None:
        run_config = out / "config.yaml"
        if not (resume and run_config.is_file()):
            raise LungsegError("--data is required (a prepared cache or a dataset folder)")
        data = load_yaml(run_config).get("cache")
    prepare_settings = None
    if not is_cache(data):
        from lungseg.cli.prepare import prepare_config

        prepare_settings = prepare_config(
            settings.preprocess or "seed", settings.size or 256, None, None, None, config
        )
    try:
        result = train(
            settings, data, out, resume=resume, cache=cache, prepare_config=prepare_settings
        )
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted; {out} keeps its last finished epoch (last.pt); continue with --resume",
            err=True,
        )
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    best = result.best_metric
    typer.echo(
        f"trained {settings.model} ({result.n_parameters:,} parameters) for {result.epochs} "
        f"epochs in {result.train_seconds:.0f}s ({result.images_per_second:.1f} img/s); best "
        f"epoch {result.best_epoch} ({best['name']} {best['value']:.4f}); run in {out}"
    )
