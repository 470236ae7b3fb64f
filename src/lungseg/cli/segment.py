"""``lungseg segment`` and ``lungseg export``: masks for new X-rays, ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app


@app.command("segment")
def segment_command(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files or folders (PNG/JPEG/TIFF/DICOM).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for masks/, overlays/, measurements.csv.")],
    model: Annotated[
        str, typer.Option(help="Shipped model: unet, fcn, deeplabv3 or ensemble.")
    ] = "unet",
    weights: Annotated[
        Path | None, typer.Option(help="A checkpoint or run directory instead of a shipped model.")
    ] = None,
    onnx: Annotated[
        Path | None, typer.Option(help="An exported .onnx model (ONNX Runtime).")
    ] = None,
    postprocess: Annotated[
        str | None, typer.Option(help="Override the postprocessing preset.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
) -> None:
    """Segment new chest X-rays: masks at the original resolution, overlays and lung areas."""
    from lungseg.errors import LungsegError
    from lungseg.inference import load_model
    from lungseg.segment import segment_files

    if weights is not None and onnx is not None:
        raise LungsegError("give --weights or --onnx, not both")
    source = onnx or weights or model
    segmenter = load_model(source, device=device, postprocess=postprocess)
    result = segment_files(segmenter, inputs, out, batch_size=batch_size)
    if result.n_done == 0:
        raise LungsegError(
            f"none of the {result.n_failed} file(s) could be read; see errors.csv", out
        )
    note = f"; {result.n_failed} file(s) skipped, see {out}/errors.csv" if result.n_failed else ""
    typer.echo(f"segmented {result.n_done} image(s) with {segmenter.name} into {out}{note}")


@app.command("export")
def export_command(
    onnx: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    model: Annotated[
        str, typer.Option(help="Shipped model name, checkpoint or run directory.")
    ] = "unet",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
) -> None:
    """Export a model to ONNX (dynamic batch; preprocessing recorded in the file)."""
    from lungseg.inference import export_onnx

    path = export_onnx(model, onnx, opset=opset)
    typer.echo(f"exported {model} to {path}")
