"""``lungseg segment``: lung masks and measurements for new X-rays, from a few files to an archive.

:func:`segment_files` reads local files and folders or ``az://CONTAINER/PREFIX`` and writes to a
local folder or ``az://CONTAINER/PREFIX``, in the layout described in
:mod:`lungseg.segment.ledger`. For each image, at its **own resolution**:

* ``masks/<key>.png`` - the lung mask, a 1-bit PNG (``key``: the image's path relative to the
  input, extension included, so two inputs never share an output);
* ``overlays/<key>.jpg`` (``overlays=True``) - the X-ray with the lungs tinted and outlined;
* ``dicom-seg/<key>.dcm`` (``dicom_seg=True``, DICOM inputs) - a DICOM Segmentation
  (:mod:`lungseg.dicom.seg`);
* ``dicom-sr/<key>.dcm`` (``dicom_sr=True``, DICOM inputs) - a DICOM SR measurement report
  (TID 1500) of the lung areas, referencing the SEG (:mod:`lungseg.dicom.sr`);
* a row of ``measurements.csv`` - the image's key and file, its outputs, lung area in pixels and
  as a share of the image, right and left lung separately (the patient's right lung is on the
  image's left, as radiographs are viewed), areas in cm² when the file states its pixel spacing
  (DICOM), and ``uncertain_fraction``, the model's doubt about the mask
  (:mod:`lungseg.inference.quality`): review the masks with the highest values first (``qc.json``
  lists them).

A file that cannot be read is listed with its reason in ``errors.csv``; the others are done.
Runs are resumable (a run does only what earlier runs have not), shardable over processes and
machines (:mod:`lungseg.segment.shard`), and stream their input (:mod:`lungseg.segment.pipeline`).

Modules: :mod:`~lungseg.segment.inputs` (what is read), :mod:`~lungseg.storage.sink` (where
it goes), :mod:`~lungseg.segment.ledger` (the record that makes runs resumable and mergeable),
:mod:`~lungseg.segment.shard`, :mod:`~lungseg.segment.pipeline` (which sends each image down
the one road, :mod:`lungseg.inference.road`); DICOM outputs: :mod:`lungseg.dicom`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungseg.core.config import to_dict
from lungseg.core.devices import pipeline_threads, torch_threads
from lungseg.core.errors import LockBusy, LockLost, LungsegError
from lungseg.inference.encode import mask_png, overlay, overlay_jpeg
from lungseg.inference.measure import lung_areas, lung_sides, measure
from lungseg.inference.segmenter import Segmenter
from lungseg.segment.inputs import (
    AzureInputs,
    DicomWebInputs,
    find_images,
    no_images,
    open_inputs,
)
from lungseg.segment.ledger import (
    DICOM_SEG,
    DICOM_SR,
    LEDGER_ROWS,
    LEDGER_SECONDS,
    LOCKS,
    MEASUREMENT_COLUMNS,
    Ledger,
    done_set,
    item_id,
    open_run,
)
from lungseg.segment.merge import MergeResult, completion, merge, merge_outputs
from lungseg.segment.pipeline import Pipeline, RunCounts
from lungseg.segment.shard import Shard, resolve_shard
from lungseg.storage.sink import Sink, StowingSink, open_sink

__all__ = [
    "MEASUREMENT_COLUMNS",
    "SegmentInterrupted",
    "SegmentResult",
    "find_images",
    "lung_areas",
    "lung_sides",
    "mask_png",
    "measure",
    "merge_outputs",
    "overlay",
    "overlay_jpeg",
    "run_settings",
    "segment_files",
]

#: Bumped when the outputs of the same model and settings change (their format or content).
OUTPUTS_VERSION = 2


class SegmentInterrupted(LungsegError):
    """Ctrl-C or SIGTERM: what was done is recorded, and running again continues."""


@dataclass
class SegmentResult:
    """What :func:`segment_files` did.

    Attributes:
        out: the output folder or URL.
        shard: the shard this process did.
        counts: images read, segmented, failed and skipped (done before) in this run.
        merged: the merged tables, when this run wrote them (one shard, or the last to finish);
            they cover every run and shard.
    """

    out: str
    shard: Shard
    counts: RunCounts
    merged: MergeResult | None

    @property
    def n_done(self) -> int:
        return self.counts.segmented

    @property
    def n_failed(self) -> int:
        return self.counts.failed

    @property
    def most_uncertain(self) -> list[tuple[float, str, str]]:
        """``(uncertain_fraction, key, file)``, most uncertain first, archive-wide."""
        return self.merged.most_uncertain if self.merged is not None else []


def run_settings(
    segmenter: Segmenter, overlays: bool, dicom_seg: bool, dicom_sr: bool = False
) -> dict[str, Any]:
    """What the outputs depend on, recorded in ``segment.json``: a run with other settings into
    the same output is refused (batch size, device and workers do not change the outputs)."""
    identity = segmenter.identity
    return {
        "model": identity.name,
        "weights_sha256": identity.digest,
        "convention": identity.convention,
        "preprocess": [to_dict(config) for _, config in segmenter.networks],
        "postprocess": to_dict(segmenter.postprocess),
        "tta": (segmenter.info or {}).get("tta"),
        "overlays": overlays,
        "dicom_seg": dicom_seg,
        "dicom_sr": dicom_sr,
        "outputs": OUTPUTS_VERSION,
    }


#: The lock held while a run checks ``segment.json`` and, with ``--overwrite``, clears what
#: other settings left: two shards switching an output to new settings at once take turns.
SETTINGS_LOCK = "settings"


@contextlib.contextmanager
def _in_turn(sink: Sink, rel: str, patience_s: float = 300.0) -> Iterator[None]:
    """Hold lock ``rel``, waiting while other processes hold it (each for seconds)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            lock = sink.lock(rel, "segment")
            lock.__enter__()
            break
        except LockBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _refuse_other_shardings(sink: Sink, shard: Shard) -> None:
    """Shards of one sharding split the images; a run of another sharding at the same time
    (``--shard 0/1`` beside ``--shard 0/2``) would do them twice and record both."""
    for name in sink.locks_held(LOCKS):
        other = name.removeprefix("shard-").partition("-of-")[2]
        if name.startswith("shard-") and other != str(shard.count):
            raise LungsegError(
                f"another lungseg segment runs on this output as {name} (shards of another "
                f"count than this --shard {shard}); run the shards of one count at a time "
                f"(wait for it, or use --shard K/{other})",
                sink.name,
            )


def default_workers(remote: bool = False) -> int:
    """Threads for reading, decoding and writing: the cores this process may use (shared with
    the other processes of a ``torchrun`` on this machine), at least 2; with ``az://`` on either
    side at least 8, since a thread that waits for the network uses no core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(8 if remote else 2, cores // max(1, local))


def segment_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path] | str | Path,
    out: str | Path,
    *,
    overlays: bool = False,
    dicom_seg: bool = False,
    dicom_sr: bool = False,
    shard: Shard | str | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    ledger_rows: int = LEDGER_ROWS,
    ledger_seconds: float = LEDGER_SECONDS,
    stow: str | None = None,
) -> SegmentResult:
    """Segment every image of ``inputs`` not yet done into ``out`` (see the module docstring).

    Args:
        segmenter: the model (:func:`lungseg.inference.segmenter.load_model`).
        inputs: local files and folders, one ``az://CONTAINER/PREFIX``, or one
            ``dicomweb://HOST:PORT/PATH?FILTERS`` (QIDO-RS query; WADO-RS retrieval).
        out: a local folder or ``az://CONTAINER/PREFIX``.
        overlays: also write ``overlays/<key>.jpg``.
        dicom_seg: also write ``dicom-seg/<key>.dcm`` for DICOM inputs (``lungseg[dicom]``).
        dicom_sr: also write ``dicom-sr/<key>.dcm``, the lung areas as a TID 1500 report.
        shard: ``"K/N"`` or a :class:`Shard`; default: from the scheduler's environment
            (:func:`~lungseg.segment.shard.resolve_shard`).
        overwrite: redo every image (see :func:`~lungseg.segment.ledger.open_run`); needed to
            reuse an output made with other settings.
        batch_size: images per forward pass (default: 8 on a CPU, where larger batches
            gain nothing; 64 on a GPU, which smaller ones leave idle).
        workers: threads for reading, decoding and writing (default: :func:`default_workers`).
        progress: show progress on stderr.
        ledger_rows: record finished images after this many...
        ledger_seconds: ...or this many seconds.
        stow: also store every SEG and SR in the PACS at this DICOMweb root by STOW-RS
            (:class:`~lungseg.storage.sink.StowingSink`).

    Returns:
        What this run did, and the merged tables when it wrote them: after a run of one shard,
        or of the last shard of N to complete (otherwise ``lungseg segment-merge`` writes them).

    Raises:
        SegmentInterrupted: Ctrl-C or SIGTERM; the images done are recorded (and, for one
            shard, merged into ``measurements.csv``).
        LungsegError: bad arguments, an output of other settings, another process on the same
            output and shard, or a storage failure (the images done stay recorded).
    """
    if batch_size is None:
        batch_size = segmenter.batch_size
    if batch_size < 1:
        raise LungsegError(f"--batch-size must be at least 1, got {batch_size}")
    shard = shard if isinstance(shard, Shard) else resolve_shard(shard)
    paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if stow is not None and not (dicom_seg or dicom_sr):
        raise LungsegError("--stow stores DICOM SEGs and SRs: give --dicom-seg and/or --dicom-sr")
    urls = ("az://", "dicomweb://", "dicomwebs://")
    remote = stow is not None or any(str(p).startswith(urls) for p in [*paths, out])
    workers = workers or default_workers(remote)
    sink = open_sink(out, workers=workers)
    writer = StowingSink(sink, stow, (DICOM_SEG, DICOM_SR)) if stow is not None else sink
    source = open_inputs(paths, out=out, workers=workers)
    listing = iter(source.items())
    first = next(listing, None)
    if first is None:
        if isinstance(source, AzureInputs):
            raise LungsegError(f"no images: {source.nothing_found()}", source.description)
        if isinstance(source, DicomWebInputs):
            raise LungsegError("no instances match the query", source.description)
        raise LungsegError(no_images(source.description))
    settings = run_settings(segmenter, overlays, dicom_seg, dicom_sr)
    with sink.lock(f"{LOCKS}/{shard.name}", "segment"):
        _refuse_other_shardings(sink, shard)
        with _in_turn(sink, f"{LOCKS}/{SETTINGS_LOCK}"):
            sid = open_run(sink, settings, shard, overwrite)
        done = done_set(sink, sid, shard)
        ledger = Ledger(sink, sid, shard, ledger_rows, ledger_seconds)
        ledger.reopen()
        pipeline = Pipeline(
            segmenter, source, writer, ledger, overlays=overlays, dicom_seg=dicom_seg,
            dicom_sr=dicom_sr, batch_size=batch_size, workers=workers, progress=progress,
        )  # fmt: skip
        counts = pipeline.counts

        def todo():
            for item in itertools.chain([first], listing):
                if not shard.owns(item.key):
                    continue
                if item_id(item.key, item.version) in done:
                    counts.skipped += 1
                    continue
                yield item

        # The CLI's thread policy, for Python callers too: a third of the cores for the model.
        threads = torch_threads(pipeline_threads()) if segmenter.torch_on_cpu else nullcontext()
        try:
            with threads:
                pipeline.run(todo())
        except KeyboardInterrupt:
            merged = merge(sink, shards=1) if shard.count == 1 else None
            in_all = f" ({merged.n_images} in all)" if merged is not None else ""
            raise SegmentInterrupted(
                f"interrupted: the {ledger.written} images done in this run are recorded"
                f"{in_all}; run the same command again to do the rest",
                sink.name,
            ) from None
        except LockLost:
            raise
        except LungsegError as exc:
            raise LungsegError(
                f"{exc.problem}; the {ledger.written} images done in this run before that are "
                "recorded: run the same command again to do the rest",
                exc.path,
            ) from None
        ledger.complete({"shard": str(shard), "segmented": counts.segmented,
                         "failed": counts.failed, "skipped": counts.skipped})  # fmt: skip
        _, pending = completion(sink, sid, shard.count)
        merged = merge(sink, shards=shard.count) if not pending else None
    return SegmentResult(sink.name, shard, counts, merged)
