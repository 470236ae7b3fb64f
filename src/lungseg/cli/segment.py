"""``lungseg segment`` and ``lungseg export``: masks for new X-rays, ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import InferenceDevice
from lungseg.shipped import MODEL_NAMES


@app.command("segment")
def segment_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files or folders (PNG/JPEG/TIFF/DICOM).", metavar="IMAGE"),
    ],
    out: Annotated[Path, typer.Option(help="Folder for masks/, overlays/, measurements.csv.")],
    model: Annotated[str, typer.Option(help=f"Shipped model: {', '.join(MODEL_NAMES)}.")] = "unet",
    weights: Annotated[
        Path | None, typer.Option(help="A checkpoint or run directory instead of a shipped model.")
    ] = None,
    onnx: Annotated[
        Path | None, typer.Option(help="An exported .onnx model (ONNX Runtime).")
    ] = None,
    postprocess: Annotated[
        str | None, typer.Option(help="Override the postprocessing preset.")
    ] = None,
    device: InferenceDevice = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation: average over 5 zoomed/rotated views.")
    ] = False,
) -> None:
    """Segment new chest X-rays: masks at the original resolution, overlays and lung areas."""
    from lungseg.errors import LungsegError
    from lungseg.inference import load_model
    from lungseg.segment import segment_files

    if weights is not None and onnx is not None:
        raise LungsegError("give --weights or --onnx, not both")
    source = onnx or weights or model
    segmenter = load_model(source, device=device, postprocess=postprocess, tta=tta)
    result = segment_files(segmenter, inputs, out, batch_size=batch_size)
    if result.n_done == 0:
        raise LungsegError(
            f"none of the {result.n_failed} file(s) could be read; see errors.csv", out
        )
    note = f"; {result.n_failed} file(s) skipped, see {out}/errors.csv" if result.n_failed else ""
    typer.echo(f"segmented {result.n_done} image(s) with {segmenter.name} into {out}{note}")
    if result.flagged:
        shown = ", ".join(f"{Path(f).name} ({why})" for f, why in result.flagged[:3])
        more = f" and {len(result.flagged) - 3} more" if len(result.flagged) > 3 else ""
        typer.echo(
            f"{len(result.flagged)} mask(s) flagged for review (column 'review' of "
            f"measurements.csv): {shown}{more}"
        )
    if result.n_done > 1:
        shown = ", ".join(f"{Path(f).name} ({u:.3f})" for u, f in result.most_uncertain[:3])
        typer.echo(f"review first (highest uncertain_fraction): {shown}")


@app.command("export")
def export_command(
    onnx: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    model: Annotated[
        str, typer.Option(help="Shipped model name, checkpoint or run directory.")
    ] = "unet",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    int8: Annotated[
        bool,
        typer.Option(help="Quantise to int8 (static, ONNX Runtime); needs --calibrate."),
    ] = False,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(help="X-ray files or folders to calibrate the int8 ranges on (repeatable)."),
    ] = None,
    calibrate_max: Annotated[
        int, typer.Option(help="Use at most this many calibration images (evenly spread).")
    ] = 64,
) -> None:
    """Export a model to ONNX (dynamic batch; preprocessing recorded in the file)."""
    from lungseg.errors import LungsegError
    from lungseg.export import evenly_spread, export_onnx
    from lungseg.segment import find_images

    images = None
    if int8:
        if not calibrate:
            raise LungsegError(
                "--int8 needs --calibrate FOLDER: X-rays like the ones you will segment "
                "(e.g. your training images) to set the int8 ranges"
            )
        images = evenly_spread(find_images(calibrate), calibrate_max)
    elif calibrate:
        raise LungsegError("--calibrate is only used with --int8")
    path = export_onnx(model, onnx, opset=opset, int8_calibration=images)
    kind = f"int8, calibrated on {len(images)} images" if images else "float32"
    typer.echo(f"exported {model} to {path} ({kind})")
