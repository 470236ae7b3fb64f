"""``lungseg segment`` and ``lungseg export``: masks for new X-rays, ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import InferenceDevice
from lungseg.models.shipped import MODEL_NAMES


@app.command("segment")
def segment_command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files or folders (PNG/JPEG/TIFF/BMP/DICOM), az://CONTAINER/PREFIX, or "
            "dicomweb://HOST:PORT/PATH?StudyDate=...&Modality=CR (a QIDO-RS query).",
            show_default=False,
            metavar="IMAGE",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(help="Folder or az://CONTAINER/PREFIX for masks/, measurements.csv, ..."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help=f"The model: shipped ({', '.join(MODEL_NAMES)}), a checkpoint, a run directory "
            "or an exported .onnx file (ONNX Runtime).  [default: unet]"
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(hidden=True, help="Older name of --model.")
    ] = None,
    onnx: Annotated[Path | None, typer.Option(hidden=True, help="Older name of --model.")] = None,
    postprocess: Annotated[
        str | None, typer.Option(help="Override the postprocessing preset.")
    ] = None,
    device: InferenceDevice = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per forward pass.", show_default="8 on a CPU, 64 on a GPU"),
    ] = None,
    tta: Annotated[
        bool, typer.Option(help="Test-time augmentation: average over 5 zoomed/rotated views.")
    ] = False,
    overlays: Annotated[
        bool, typer.Option("--overlays/--no-overlays", help="Also write overlays/<key>.jpg.")
    ] = False,
    dicom_seg: Annotated[
        bool,
        typer.Option(
            "--dicom-seg", help="Also write a DICOM SEG per DICOM input (needs lungseg[dicom])."
        ),
    ] = False,
    dicom_sr: Annotated[
        bool,
        typer.Option(
            "--dicom-sr",
            help="Also write a DICOM SR (TID 1500) of the lung areas per DICOM input, "
            "referencing its SEG (needs lungseg[dicom]).",
        ),
    ] = False,
    stow: Annotated[
        str | None,
        typer.Option(
            help="Also store each DICOM SEG/SR in a PACS by STOW-RS: its DICOMweb root "
            "(http(s):// or dicomweb://HOST:PORT/PATH; bearer token from "
            "$LUNGSEG_DICOMWEB_TOKEN). --out stays the local record.",
            metavar="URL",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Do shard K of N (K from 0); default: from torchrun, a Slurm array or a "
            "Kubernetes Indexed Job, else all.",
            metavar="K/N",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Redo every image, replacing what OUT holds.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Threads for reading, decoding and writing (default: the cores; at least 8 "
            "with az://)."
        ),
    ] = None,
) -> None:
    """Segment chest X-rays, from a few files to an archive: masks at the original resolution,
    lung areas, QC; resumable (run it again to continue) and shardable."""
    from lungseg.core.devices import pipeline_threads
    from lungseg.core.errors import LungsegError
    from lungseg.inference.segmenter import load_model
    from lungseg.segment import SegmentInterrupted, segment_files
    from lungseg.segment.shard import resolve_shard

    given = [str(v) for v in (model, weights, onnx) if v is not None]
    if len(given) > 1:
        # One thing under one name: --weights and --onnx are older names of --model.
        raise LungsegError(
            f"--model, --weights and --onnx all name the model; give one, not {given}"
        )
    the_shard = resolve_shard(shard)
    segmenter = load_model(
        given[0] if given else "unet",
        device=device,
        postprocess=postprocess,
        tta=tta,
        threads=pipeline_threads(),
    )
    try:
        result = segment_files(
            segmenter, inputs, out, overlays=overlays, dicom_seg=dicom_seg, dicom_sr=dicom_sr,
            shard=the_shard, overwrite=overwrite, batch_size=batch_size, workers=workers, stow=stow,
        )  # fmt: skip
    except SegmentInterrupted as exc:
        typer.echo(str(exc), err=True)
        _exit_now(130)
    except KeyboardInterrupt:  # before any image was started: nothing to record
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    counts, merged = result.counts, result.merged
    part = f" (shard {the_shard}, from {the_shard.source})" if the_shard.count > 1 else ""
    before = f"; {counts.skipped} done before" if counts.skipped else ""
    note = f"; {counts.failed} file(s) skipped, see {out}/errors.csv" if counts.failed else ""
    typer.echo(
        f"segmented {counts.segmented} image(s) with {segmenter.name} into {out}{part}"
        f"{before}{note}"
    )
    if merged is None:
        typer.echo(
            f"{out}/measurements.csv is written when the last shard finishes (or run "
            f"lungseg segment-merge {out})"
        )
        return
    _report_merge(merged, out)


@app.command("segment-merge")
def segment_merge_command(
    out: Annotated[str, typer.Argument(help="The --out of the segment runs (folder or az://).")],
) -> None:
    """Merge the shards of lungseg segment into measurements.csv, errors.csv and qc.json."""
    from lungseg.segment.merge import merge_outputs

    merged = merge_outputs(out)
    typer.echo(
        f"merged {merged.n_images} image(s) into {out}/measurements.csv "
        f"({merged.n_segmented} segmented, {merged.n_failed} failed)"
    )
    _report_merge(merged, out)


def _report_merge(merged, out: str) -> None:
    from lungseg.core.errors import LungsegError, printable

    if merged.n_segmented == 0 and merged.n_failed:
        raise LungsegError(
            f"none of the {merged.n_failed} file(s) could be read; see errors.csv", out
        )
    if merged.pending:
        shards = ", ".join(map(str, merged.pending))
        typer.echo(
            f"not complete: shard(s) {shards} of {merged.shards} have not finished; the tables "
            "hold what is done so far"
        )
    if merged.n_flagged:
        shown = printable(", ".join(f"{key} ({why})" for key, why in merged.flagged[:3]))
        more = f" and {merged.n_flagged - 3} more" if merged.n_flagged > 3 else ""
        typer.echo(
            f"{merged.n_flagged} mask(s) flagged for review (column 'review' of "
            f"measurements.csv): {shown}{more}"
        )
    if merged.n_segmented > 1:
        shown = printable(", ".join(f"{key} ({u:.3f})" for u, key, _ in merged.most_uncertain[:3]))
        typer.echo(f"review first (highest uncertain_fraction; more in qc.json): {shown}")


def _exit_now(code: int) -> None:
    """Exit with ``code``; at once when a worker thread still runs: a read that hangs there (a
    stalled network file system) would keep the interpreter from ever exiting after the work
    done was recorded, and a second SIGTERM would find nobody listening."""
    import os
    import sys
    import threading

    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command("export")
def export_command(
    onnx: Annotated[Path, typer.Option(help="The .onnx file to write.")],
    model: Annotated[
        str, typer.Option(help="Shipped model name, checkpoint or run directory.")
    ] = "unet",
    opset: Annotated[int | None, typer.Option(help="ONNX opset [default: 17].")] = None,
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
    from lungseg.core.errors import LungsegError
    from lungseg.inference.export import evenly_spread, export_onnx
    from lungseg.segment.inputs import find_images

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
    kwargs = {} if opset is None else {"opset": opset}
    path = export_onnx(model, onnx, int8_calibration=images, **kwargs)
    kind = f"int8, calibrated on {len(images)} images" if images else "float32"
    typer.echo(f"exported {model} to {path} ({kind})")
