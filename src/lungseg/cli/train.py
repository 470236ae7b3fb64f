"""``lungseg train``: train a segmentation model into a run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import (
    BatchSize,
    Config,
    Convention,
    Device,
    Epochs,
    Loss,
    Lr,
    NFilters,
    Preprocess,
    Schedule,
    Select,
    Size,
    SkipBad,
    TrainSeed,
    default,
)
from lungseg.training.config import TrainConfig


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Run directory to write (or to resume).")],
    model: Annotated[
        str | None, typer.Option(help="Model architecture ('lungseg models' lists them).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Prepared cache folder, or a dataset folder / az://CONTAINER/PREFIX to prepare "
            "first. With --resume, defaults to the run's cache."
        ),
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    size: Size = None,
    preprocess: Preprocess = None,
    convention: Convention = None,
    device: Device = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    loss: Loss = None,
    schedule: Schedule = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment", help="Augment training batches.", show_default="augment"
        ),
    ] = None,
    select: Select = None,
    n_filters: NFilters = None,
    dropout: Annotated[
        float | None, typer.Option(help="Dropout.", show_default=default(TrainConfig, "dropout"))
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE, repeatable: a further constructor argument of the model, e.g. "
            "downsample=2 (unet), depth=4 (fcn) or skips=true (fcn, deeplabv3); "
            "'lungseg models' lists them.",
        ),
    ] = None,
    seed: TrainSeed = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from these weights instead of random ones (fine-tuning): a shipped "
            "model, a checkpoint or a run directory of the same architecture.",
            show_default="random",
        ),
    ] = None,
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
    config: Config = None,
    skip_bad: SkipBad = False,
) -> None:
    """Train a segmentation model; writes config.yaml, best.pt, last.pt, history.csv, curves.png."""
    from lungseg.cli.options import parse_model_args
    from lungseg.data.settings import prepare_flags
    from lungseg.training import train
    from lungseg.training.config import resolve_run

    flags = {
        "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device,
        "loss": loss, "schedule": schedule, "augment": augment, "select": select,
        "n_filters": n_filters, "dropout": dropout, "seed": seed, "init": init, "workers": workers,
        "threads": threads, "compile": compile, "amp": amp,
        "model_kwargs": parse_model_args(model_arg) if model_arg else None,
    }  # fmt: skip
    plan = resolve_run(
        out, flags, prepare_flags(preprocess, size, convention=convention), config, data, resume
    )
    try:
        result = train(
            plan.config, plan.data, out, resume=resume, cache=cache, prepare=plan.prepare,
            skip_bad=skip_bad,
        )  # fmt: skip
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
        f"trained {plan.config.model} ({result.n_parameters:,} parameters) for {result.epochs} "
        f"epochs in {result.train_seconds:.0f}s ({result.images_per_second:.1f} img/s); best "
        f"epoch {result.best_epoch} ({best['name']} {best['value']:.4f}); run in {out}"
    )
