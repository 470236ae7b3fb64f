"""``lungseg compare``: train and evaluate several models on the same split, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@app.command("compare")
def compare_command(
    out: Annotated[Path, typer.Option(help="Folder for caches, runs and report.html.")],
    data: Annotated[
        str | None, typer.Option(help="Dataset folder or az://CONTAINER/PREFIX.")
    ] = None,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "unet,fcn,deeplabv3",
    preprocess: Annotated[
        str, typer.Option(help="Preprocessing preset(s), comma-separated.")
    ] = "seed",
    postprocess: Annotated[
        str, typer.Option(help="Postprocessing preset(s), comma-separated.")
    ] = "seed",
    size: Annotated[int, typer.Option(help="Working size.")] = 256,
    epochs: Annotated[int | None, typer.Option(help="Epochs per model.", show_default="50")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.", show_default="16")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam learning rate.", show_default="1e-3")
    ] = None,
    loss: Annotated[str | None, typer.Option(help="bce or bce_dice.", show_default="bce")] = None,
    schedule: Annotated[str | None, typer.Option(help="none, cosine, onecycle.")] = None,
    select: Annotated[str | None, typer.Option(help="Best weights by loss or dice.")] = None,
    n_filters: Annotated[int | None, typer.Option(help="Model base width.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    val: Annotated[float, typer.Option(help="Validation share of non-test images.")] = 0.2,
    test: Annotated[float, typer.Option(help="Test share of all images.")] = 0.1,
    split_seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings file (train: section).")
    ] = None,
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
) -> None:
    """Compare models: train each, evaluate on the same test split, write report.md/html."""
    from lungseg.cli.train import train_settings
    from lungseg.compare import compare, compare_shipped, report_from_runs
    from lungseg.data.cache import PrepareConfig
    from lungseg.errors import LungsegError

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
            data, out, _names(models), split=split, device=device or "auto", title=title
        )
        _print_summary(out, path)
        return
    flags = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss,
        "schedule": schedule, "select": select, "n_filters": n_filters, "seed": seed,
        "device": device,
    }  # fmt: skip
    settings = train_settings(flags, config, None)
    split = PrepareConfig(val_fraction=val, test_fraction=test, seed=split_seed)
    path = compare(
        data, out, settings, models=_names(models), preprocess=_names(preprocess),
        postprocess=_names(postprocess), size=size, split=split,
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
