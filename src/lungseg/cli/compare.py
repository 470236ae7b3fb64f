"""``lungseg compare``: train and evaluate several models on the same split, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import (
    BatchSize,
    Config,
    Device,
    Epochs,
    Loss,
    Lr,
    NFilters,
    Schedule,
    Select,
    Size,
    SkipBad,
    Test,
    TrainSeed,
    Val,
    default,
)
from lungseg.data.preprocessing import DEFAULT_PRESET, PRESETS
from lungseg.data.settings import PrepareConfig
from lungseg.models.shipped import STUDY_MODELS


def _names(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@app.command("compare")
def compare_command(
    out: Annotated[Path, typer.Option(help="Folder for caches, runs and report.html.")],
    data: Annotated[
        str | None, typer.Option(help="Dataset folder or az://CONTAINER/PREFIX.")
    ] = None,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = ",".join(STUDY_MODELS),
    preprocess: Annotated[
        str | None,
        typer.Option(
            help=f"Preprocessing preset(s), comma-separated: {', '.join(PRESETS)}.",
            show_default=DEFAULT_PRESET,
        ),
    ] = None,
    postprocess: Annotated[
        str | None,
        typer.Option(
            help="Postprocessing preset(s), comma-separated.", show_default="the training's"
        ),
    ] = None,
    size: Size = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    loss: Loss = None,
    schedule: Schedule = None,
    select: Select = None,
    n_filters: NFilters = None,
    seed: TrainSeed = None,
    device: Device = None,
    val: Val = None,
    test: Test = None,
    split_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the split.", show_default=default(PrepareConfig, "seed")),
    ] = None,
    config: Config = None,
    shipped: Annotated[
        bool,
        typer.Option(
            "--shipped",
            help="Evaluate the shipped models (or --models checkpoints) on --data; no training.",
        ),
    ] = False,
    split: Annotated[
        str, typer.Option(help="With --shipped: the split to evaluate (all, test, val, train).")
    ] = "all",
    title: Annotated[str | None, typer.Option(help="Title of the report.")] = None,
    from_runs: Annotated[
        bool,
        typer.Option(
            "--from-runs",
            help="Rebuild the report from the RUNS given (run directories), without training.",
        ),
    ] = False,
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run directories, with --from-runs.", show_default=False),
    ] = None,
    skip_bad: SkipBad = False,
) -> None:
    """Compare models: train each, evaluate on the same test split, write report.md/html."""
    from lungseg.core.config import read_section, resolve
    from lungseg.core.errors import LungsegError
    from lungseg.data.settings import prepare_settings
    from lungseg.evaluation.compare import compare, compare_shipped, report_from_runs
    from lungseg.training.config import TrainConfig

    # RUN_DIR... after one --from-runs (click options take one value each, arguments many).
    if runs and not from_runs:
        raise LungsegError("run directories given without --from-runs: --from-runs RUN_DIR ...")
    if from_runs:
        path = report_from_runs(runs or [], out)
        typer.echo(f"report of {len(runs or [])} run(s): {path}")
        return
    if data is None:
        raise LungsegError("--data is required (or --from-runs RUN_DIR ...)")
    if shipped:
        path = compare_shipped(
            data, out, _names(models), split=split, device=device or "auto", title=title,
            skip_bad=skip_bad,
        )  # fmt: skip
        _print_summary(out, path)
        return
    flags = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
        "schedule": schedule, "select": select, "n_filters": n_filters, "seed": seed,
        "device": device,
    }  # fmt: skip
    settings = resolve(TrainConfig, [read_section(config, "train"), ("flags", flags)])
    prepare = prepare_settings(config, size=size, val=val, test=test, seed=split_seed)
    path = compare(
        data, out, settings, models=_names(models), preprocess=_names(preprocess),
        postprocess=_names(postprocess), prepare=prepare, skip_bad=skip_bad,
    )  # fmt: skip
    _print_summary(out, path)


def _print_summary(out: Path, path: Path) -> None:
    import json

    summary = json.loads((out / "comparison.json").read_text())
    for row in summary["table"]:
        typer.echo(
            f"{row['model']:<28} mDice {row['mDice']}  CI {row['95% CI']}  mIoU {row['mIoU']}  "
            f"MSE {row['MSE']}  HD95 {row['HD95 (px)']}"
        )
    typer.echo(summary["verdict"])
    typer.echo(f"report: {path}")
