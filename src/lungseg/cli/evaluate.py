"""``lungseg evaluate``: score a run, a checkpoint or a shipped model on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import Convention, InferenceDevice, SkipBad
from lungseg.models.shipped import MODEL_NAMES


def _split_list(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@app.command("evaluate")
def evaluate_command(
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, per_image.csv, masks/.")],
    run: Annotated[Path | None, typer.Option(help="Run directory (uses its best.pt).")] = None,
    model: Annotated[
        str | None,
        typer.Option(help=f"Shipped model ({', '.join(MODEL_NAMES)}) or a .pt/.onnx file."),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset folder, az:// URL or cache.")] = None,
    split: Annotated[str | None, typer.Option(help="test, val, train or all.")] = None,
    postprocess: Annotated[
        str | None, typer.Option(help="Preset(s) to report, comma-separated, or 'all'.")
    ] = None,
    save_masks: Annotated[bool, typer.Option(help="Write the masks as PNG.")] = False,
    device: InferenceDevice = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per forward pass.", show_default="16 on a CPU, 64 on a GPU"),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            help="Score at SIZE x SIZE (masks resized like 'segment' does) to compare models "
            "trained at different sizes.",
            show_default="the model's working size",
        ),
    ] = None,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation: average over 5 zoomed/rotated views.")
    ] = False,
    convention: Convention = None,
    skip_bad: SkipBad = False,
) -> None:
    """Evaluate a model: mean Dice, IoU, MSE, HD95 with 95% confidence intervals."""
    from lungseg.core.errors import LungsegError
    from lungseg.data.settings import PrepareConfig
    from lungseg.evaluation.evaluate import evaluate

    if (run is None) == (model is None):
        raise LungsegError("give exactly one of --run RUN_DIR or --model NAME_OR_PATH")
    result = evaluate(
        run if run is not None else model,
        out,
        data=data,
        split=split,
        postprocess=_split_list(postprocess),
        save_masks=save_masks,
        device=device,
        batch_size=batch_size,
        size=size,
        tta=tta,
        skip_bad=skip_bad,
        split_config=PrepareConfig(convention=convention) if convention else None,
    )
    m = result.metrics
    low, high = m["dice_ci95"]
    typer.echo(
        f"{m['model']} ({m['convention']} convention) on {m['n_images']} {m['split']} images: "
        f"Dice {m['dice_mean']:.4f} (95% CI {low:.4f}-{high:.4f}), IoU {m['iou_mean']:.4f}, "
        f"MSE {m['mse_mean']:.4f}, HD95 {m['hd95_mean']:.2f} px; worst {m['dice_worst']:.4f} "
        f"({m['dice_worst_stem']}) -> {out}/metrics.json"
    )
    for name, s in (m.get("postprocess_presets") or {}).items():
        typer.echo(f"  postprocess {name:>6}: Dice {s['dice_mean']:.4f}, IoU {s['iou_mean']:.4f}")
    if m["convention_check"]["warning"]:
        typer.echo(f"warning: {m['convention_check']['warning']}", err=True)
