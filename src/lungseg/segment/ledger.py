"""The record a ``segment`` run keeps in its output, which makes it resumable and mergeable.

Layout of an output (a local folder or ``az://CONTAINER/PREFIX``, the same either way)::

    segment.json                        the settings the outputs were made with (model and its
                                        weights' SHA-256, pre/postprocessing, TTA, outputs)
    masks/<key>.png                     1-bit mask at the image's resolution
    overlays/<key>.jpg                  with --overlays
    dicom-seg/<key>.dcm                 with --dicom-seg, for DICOM inputs
    parts/<settings id>/shard-K-of-N/   the ledger of shard K of N: 000000.csv, 000001.csv...
                                        one row per image done (or failed), and complete.json
                                        once the shard has done all its images
    measurements.csv, errors.csv        every shard's rows merged, sorted by key
    qc.json                             counts, errors by problem, the masks to review first
                                        (:mod:`lungseg.segment.merge`)

An image is *done* only when its outputs are written **and** a ledger file names it: the ledger
is written in whole files (every :data:`LEDGER_ROWS` images or :data:`LEDGER_SECONDS`), each
after the outputs it lists, so a run killed at any moment loses at most the images since the
last ledger file, which the next run does again (writing the same bytes). A ledger row records
the input's version (size and modification time, or the blob's ETag), so an input that changed
since is done again. The merge is deterministic, so the merged tables are byte-identical however
the work was interrupted or sharded.

An output holds one set of settings: a run with other settings is refused unless it is given
``--overwrite`` (the ledgers live under the settings' id, so ledgers of other settings never
count as done).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.errors import LungsegError
from lungseg.io_utils import csv_text, sha256_json
from lungseg.segment.outputs import Sink, delete_folder
from lungseg.segment.shard import Shard

FORMAT = "lungseg-segment/1"
MANIFEST = "segment.json"
MASKS, OVERLAYS, DICOM_SEG = "masks", "overlays", "dicom-seg"
PARTS, LOCKS = "parts", ".locks"
MEASUREMENTS, ERRORS, QC = "measurements.csv", "errors.csv", "qc.json"
COMPLETE = "complete.json"

MEASUREMENT_COLUMNS = (
    "key", "file", "mask", "overlay", "dicom_seg", "height", "width", "lung_px", "lung_fraction",
    "right_lung_px", "left_lung_px", "spacing_mm", "lung_cm2", "right_lung_cm2",
    "left_lung_cm2", "uncertain_fraction", "review", "convention",
)  # fmt: skip
ERROR_COLUMNS = ("key", "file", "problem")
LEDGER_COLUMNS = ("key", "version", "status", "done_at", "problem", *MEASUREMENT_COLUMNS[1:])

#: A ledger file is written after this many images, or this many seconds, whichever comes first.
LEDGER_ROWS = 1000
LEDGER_SECONDS = 30.0


def output_names(key: str) -> dict[str, str]:
    """The outputs of the image with this key: ``{"mask": "masks/<key>.png", ...}``.

    The key keeps its own extension (``x.png`` -> ``masks/x.png.png``, ``x.jpg`` ->
    ``masks/x.jpg.png``), so two inputs can never map to one output.

    Raises:
        LungsegError: the key cannot be a file name (``..``, ``.`` or an empty part: possible in
            a blob name, never in a local path).
    """
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise LungsegError("name cannot be written as an output file ('.', '..' or '//' in it)")
    return {
        "mask": f"{MASKS}/{key}.png",
        "overlay": f"{OVERLAYS}/{key}.jpg",
        "dicom_seg": f"{DICOM_SEG}/{key}.dcm",
    }


# -- settings -----------------------------------------------------------------------------------


def open_run(sink: Sink, settings: dict[str, Any], shard: Shard, overwrite: bool) -> str:
    """Check ``segment.json`` against ``settings`` (creating it on a new output) and apply
    ``--overwrite``; returns the settings' id, which names the ledgers.

    With ``overwrite``, one unsharded run clears everything segment wrote before; a shard of
    several clears its own ledger only (the other shards run at the same time) and redoes its
    images, whose outputs are replaced as they are written.

    Raises:
        LungsegError: the output holds results of other settings (or of an older lungseg, or a
            ``masks/`` folder that is not segment's), and ``overwrite`` is not given.
    """
    sid = sha256_json(settings)[:12]
    data = (json.dumps({"format": FORMAT, "settings_id": sid, "settings": settings},
                       indent=1, sort_keys=True) + "\n").encode()  # fmt: skip
    found = read_manifest(sink)
    if found is None:
        if sink.get(MEASUREMENTS) is not None:
            if not overwrite:
                raise LungsegError(
                    f"holds results of an earlier lungseg segment (no {MANIFEST}); pass "
                    "--overwrite to replace them, or choose another --out",
                    sink.name,
                )
            clear(sink)
        elif next(iter(sink.list(MASKS)), None) is not None:
            raise LungsegError(
                "has a masks/ folder that lungseg segment did not write (ground truth?); "
                "choose another --out",
                sink.name,
            )
        if sink.create(MANIFEST, data):
            return sid
        found = read_manifest(sink)  # another shard created it first
    assert found is not None
    if found.get("settings_id") != sid:
        if not overwrite:
            raise LungsegError(
                f"holds results made with other settings ({_differences(found, settings)}); "
                "pass --overwrite to redo everything there, or choose another --out",
                sink.name,
            )
        if shard.count == 1:
            clear(sink)
        else:
            stale = {rel.split("/")[1] for rel in sink.list(PARTS)} - {sid}
            for other in stale:
                delete_folder(sink, f"{PARTS}/{other}")
        sink.put(MANIFEST, data)
    elif overwrite:
        if shard.count == 1:
            clear(sink)
            sink.put(MANIFEST, data)
        else:
            delete_folder(sink, ledger_folder(sid, shard))
    return sid


def read_manifest(sink: Sink) -> dict[str, Any] | None:
    data = sink.get(MANIFEST)
    if data is None:
        return None
    try:
        found = json.loads(data)
        if found.get("format") != FORMAT:
            raise ValueError(f"format {found.get('format')!r}")
        return found
    except (ValueError, AttributeError) as exc:
        raise LungsegError(
            f"damaged {MANIFEST} ({exc}); run lungseg segment --overwrite into it to start over",
            sink.where(MANIFEST),
        ) from None


def _differences(found: dict[str, Any], settings: dict[str, Any]) -> str:
    before = found.get("settings", {})
    changed = []
    for key in sorted(set(before) | set(settings)):
        old, new = before.get(key), settings.get(key)
        if old != new:
            simple = all(isinstance(v, str | bool | int | float | type(None)) for v in (old, new))
            changed.append(f"{key}: {old} -> {new}" if simple else f"{key} differ")
    return ", ".join(changed) or "unknown"


def clear(sink: Sink) -> None:
    """Delete every file segment writes (not the locks)."""
    for folder in (MASKS, OVERLAYS, DICOM_SEG, PARTS):
        delete_folder(sink, folder)
    sink.delete([MEASUREMENTS, ERRORS, QC, MANIFEST])


# -- ledgers ------------------------------------------------------------------------------------


def ledger_folder(sid: str, shard: Shard) -> str:
    return f"{PARTS}/{sid}/{shard.name}"


def now() -> str:
    """The ``done_at`` of a ledger row (UTC, microseconds: rows of one key order by it)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


class Ledger:
    """The ledger of one shard: rows of finished images, written in whole files.

    Args:
        sink: the output.
        sid: the settings' id.
        shard: whose ledger.
        every_rows: write a file after this many rows...
        every_seconds: ...or when the oldest unwritten row is this old.
    """

    def __init__(
        self,
        sink: Sink,
        sid: str,
        shard: Shard,
        every_rows: int = LEDGER_ROWS,
        every_seconds: float = LEDGER_SECONDS,
    ) -> None:
        import time

        self._clock = time.monotonic
        self.sink, self.folder = sink, ledger_folder(sid, shard)
        self.every_rows, self.every_seconds = every_rows, every_seconds
        numbers = [int(Path(rel).stem) for rel in sink.list(self.folder) if is_ledger(rel)]
        self.next_number = max(numbers, default=-1) + 1
        self.rows: list[dict[str, Any]] = []
        self._since = 0.0
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        if not self.rows:
            self._since = self._clock()
        self.rows.append(row)

    @property
    def due(self) -> bool:
        return len(self.rows) >= self.every_rows or (
            bool(self.rows) and self._clock() - self._since >= self.every_seconds
        )

    def flush(self) -> None:
        """Write the rows added since the last file as the next file (sorted by key)."""
        if not self.rows:
            return
        self.sink.sync()  # the outputs of these rows reach the disk before the rows do
        text = csv_text(sorted(self.rows, key=order), LEDGER_COLUMNS)
        self.sink.put(f"{self.folder}/{self.next_number:06d}.csv", text.encode())
        self.sink.sync()
        rows = self.rows
        self.next_number += 1
        self.written += len(rows)
        self.rows = []

    def reopen(self) -> None:
        """The shard runs again: it is not complete until it has seen its whole input again."""
        self.sink.delete([f"{self.folder}/{COMPLETE}"])

    def complete(self, summary: dict[str, Any]) -> None:
        self.flush()
        self.sink.put(f"{self.folder}/{COMPLETE}", (json.dumps(summary) + "\n").encode())


def order(row: dict[str, str]) -> tuple[str, str]:
    """How ledger rows are sorted: by key, then by when they were done."""
    return row["key"], row["done_at"]


def is_ledger(rel: str) -> bool:
    name = Path(rel).name
    return name.endswith(".csv") and name[:-4].isdigit()


def read_rows(lines: Iterable[str], where: str) -> Iterator[dict[str, str]]:
    """The rows of a ledger file (``lines``: its text, line by line)."""
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != LEDGER_COLUMNS:
        raise LungsegError(
            "damaged ledger file (unexpected columns); delete it and run again (its images are "
            "done again)",
            where,
        )
    yield from reader


def item_id(key: str, version: str) -> int:
    """64-bit id of an image's key and version: a done set of a million images takes 8 MB."""
    digest = hashlib.blake2b(f"{key}\0{version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class DoneSet:
    """The images a shard has done before, as sorted 64-bit ids of key and version."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: int) -> bool:
        i = int(np.searchsorted(self.ids, np.uint64(id_)))
        return i < len(self.ids) and int(self.ids[i]) == id_


def done_set(sink: Sink, sid: str, shard: Shard) -> DoneSet:
    """What the ledgers of these settings (any sharding) record as done for ``shard``."""
    ids = []
    for rel in sink.list(f"{PARTS}/{sid}"):
        if not is_ledger(rel):
            continue
        data = sink.get(rel)
        if data is None:  # deleted meanwhile by an --overwrite
            continue
        ids.extend(
            item_id(row["key"], row["version"])
            for row in read_rows(io.StringIO(data.decode("utf-8")), sink.where(rel))
            if shard.owns(row["key"])
        )
    return DoneSet(np.unique(np.array(ids, dtype=np.uint64)))
