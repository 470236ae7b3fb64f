"""Command-line options that several commands share, declared once.

Each option's help shows the default from the settings dataclass that owns it, so a default lives
in one place; every option defaults to ``None`` ("not given"), which lets a YAML file's value
stand (:func:`lungseg.core.config.resolve`). Only light modules are imported here: ``--help`` must
not load NumPy or PyTorch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from lungseg.data.preprocessing import DEFAULT_PRESET, PRESETS, PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.training.config import DEVICES, LOSSES, SCHEDULES, SELECT, TrainConfig


def default(cls: type, name: str) -> str:
    """The default of field ``name`` of dataclass ``cls``, as the help shows it."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return str(found.default_factory())
    return str(found.default)


def choices(values: Any) -> str:
    return ", ".join(values)


# -- data: the prepare settings every command that prepares a dataset takes ----------------------

Size = Annotated[
    int | None,
    typer.Option(help="Working size in pixels.", show_default=default(PreprocessConfig, "size")),
]
Preprocess = Annotated[
    str | None,
    typer.Option(help=f"Preprocessing preset: {choices(PRESETS)}.", show_default=DEFAULT_PRESET),
]
Val = Annotated[
    float | None,
    typer.Option(
        help="Validation share of the non-test images.",
        show_default=default(PrepareConfig, "val_fraction"),
    ),
]
Test = Annotated[
    float | None,
    typer.Option(
        help="Test share of all images.", show_default=default(PrepareConfig, "test_fraction")
    ),
]
Convention = Annotated[
    str | None,
    typer.Option(
        help="Mask convention of the dataset's masks: anatomical (the lung behind the heart "
        "included), visible (visible lung fields, as the COVID-19 Radiography Database's own "
        "masks), unknown.",
        show_default=default(PrepareConfig, "convention"),
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(help="YAML settings file (prepare: and train: sections)."),
]
SkipBad = Annotated[
    bool,
    typer.Option(help="When preparing a dataset, leave bad files out (listed in skipped.csv)."),
]

# -- training: the settings train and compare share ---------------------------------------------

Epochs = Annotated[
    int | None, typer.Option(help="Epochs in total.", show_default=default(TrainConfig, "epochs"))
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Images per step (per process).", show_default=default(TrainConfig, "batch_size")
    ),
]
Lr = Annotated[
    float | None,
    typer.Option(help="Adam learning rate.", show_default=default(TrainConfig, "lr")),
]
Loss = Annotated[
    str | None,
    typer.Option(
        help=f"Loss: {choices(LOSSES)} (BCE + soft Dice).",
        show_default=default(TrainConfig, "loss"),
    ),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        help=f"Learning-rate schedule, per step: {choices(SCHEDULES)}.",
        show_default=default(TrainConfig, "schedule"),
    ),
]
Select = Annotated[
    str | None,
    typer.Option(
        help=f"Best weights by validation {' or '.join(SELECT)}.",
        show_default=default(TrainConfig, "select"),
    ),
]
NFilters = Annotated[
    int | None,
    typer.Option(help="Model base width.", show_default=default(TrainConfig, "n_filters")),
]
TrainSeed = Annotated[
    int | None,
    typer.Option(help="Training seed.", show_default=default(TrainConfig, "seed")),
]
Device = Annotated[
    str | None,
    typer.Option(
        help=f"Where to train: {choices(DEVICES)}.", show_default=default(TrainConfig, "device")
    ),
]

InferenceDevice = Annotated[str, typer.Option(help="Where to run the model: auto, cpu, cuda[:N].")]


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["downsample=2", "skips=false"]`` -> ``{"downsample": 2, "skips": False}`` (YAML)."""
    import yaml

    from lungseg.core.errors import LungsegError

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
