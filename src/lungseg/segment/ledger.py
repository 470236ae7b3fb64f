"""The record a ``segment`` run keeps in its output, which makes it resumable and mergeable.

Layout of an output (a local folder or ``az://CONTAINER/PREFIX``, the same either way)::

    segment.json                        the settings the outputs were made with (model and its
                                        weights' SHA-256, pre/postprocessing, TTA, outputs)
    masks/<key>.png                     1-bit mask at the image's resolution
    overlays/<key>.jpg                  with --overlays
    dicom-seg/<key>.dcm                 with --dicom-seg, for DICOM inputs
    dicom-sr/<key>.dcm                  with --dicom-sr, for DICOM inputs (the TID 1500 report)
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
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.core.errors import LockLost, LungsegError, printable
from lungseg.core.io_utils import csv_text, sha256_json
from lungseg.segment.names import one_line, output_stem
from lungseg.segment.shard import Shard
from lungseg.storage.sink import Sink, delete_folder

FORMAT = "lungseg-segment/1"
MANIFEST = "segment.json"
MASKS, OVERLAYS, DICOM_SEG, DICOM_SR = "masks", "overlays", "dicom-seg", "dicom-sr"
PARTS, LOCKS = "parts", ".locks"
MEASUREMENTS, ERRORS, QC = "measurements.csv", "errors.csv", "qc.json"
COMPLETE = "complete.json"

MEASUREMENT_COLUMNS = (
    "key", "file", "mask", "overlay", "dicom_seg", "dicom_sr", "height", "width", "lung_px",
    "lung_fraction", "orientation", "right_lung_px", "left_lung_px", "spacing_mm",
    "spacing_source", "lung_cm2", "right_lung_cm2", "left_lung_cm2", "uncertain_fraction",
    "review", "convention",
)  # fmt: skip
ERROR_COLUMNS = ("key", "file", "problem")
LEDGER_COLUMNS = ("key", "version", "status", "done_at", "problem", *MEASUREMENT_COLUMNS[1:])

#: A ledger file is written after this many images, or this many seconds, whichever comes first.
LEDGER_ROWS = 1000
LEDGER_SECONDS = 30.0


def output_names(key: str) -> dict[str, str]:
    """The outputs of the image with this key: ``{"mask": "masks/<key>.png", ...}``.

    The key keeps its own extension (``x.png`` -> ``masks/x.png.png``, ``x.jpg`` ->
    ``masks/x.jpg.png``), so two inputs can never map to one output. A key that cannot be a file
    name as it is (control characters, a part too long, ``..``) is named by its hash instead
    (:func:`lungseg.segment.names.output_stem`); the CSVs keep the key.
    """
    stem = output_stem(key)
    return {
        "mask": f"{MASKS}/{stem}.png",
        "overlay": f"{OVERLAYS}/{stem}.jpg",
        "dicom_seg": f"{DICOM_SEG}/{stem}.dcm",
        "dicom_sr": f"{DICOM_SR}/{stem}.dcm",
    }


# -- settings -----------------------------------------------------------------------------------


def open_run(sink: Sink, settings: dict[str, Any], shard: Shard, overwrite: bool) -> str:
    """Check ``segment.json`` against ``settings`` (creating it on a new output) and apply
    ``--overwrite``; returns the settings' id, which names the ledgers.

    With ``overwrite``, a run of other settings clears everything segment wrote before (every
    shard's); with the same settings, one unsharded run clears everything, and a shard of
    several its own ledger only (the other shards run at the same time), redoing its images,
    whose outputs are replaced as they are written. The caller holds a lock while this runs, so
    shards that switch an output at the same time take turns.

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
        # Every shard's outputs go, not only this one's: masks of other settings left beside
        # the new ones would be taken for theirs (the shards that switch take turns).
        clear(sink)
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
    for folder in (MASKS, OVERLAYS, DICOM_SEG, DICOM_SR, PARTS):
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
        self.sink, self.sid, self.folder = sink, sid, ledger_folder(sid, shard)
        self.every_rows, self.every_seconds = every_rows, every_seconds
        numbers = [int(Path(rel).stem) for rel in sink.list(self.folder) if is_ledger(rel)]
        self.next_number = max(numbers, default=-1) + 1
        self.rows: list[dict[str, Any]] = []
        self._since = 0.0
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        row = {**row, "problem": one_line(row.get("problem") or "")}
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
        found = read_manifest(self.sink)
        if found is None or found.get("settings_id") != self.sid:
            raise LockLost(
                f"{MANIFEST} now holds other settings (another run of lungseg segment --overwrite "
                "replaced them); this run stopped before recording more",
                self.sink.name,
            )
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


class DamagedLedger(LungsegError):
    """A ledger file that is cut or holds a value segment never writes (a damaged disk, a hand
    edit): the images it recorded are to be done again."""


#: Columns of an ``ok`` row that hold numbers (checked when a ledger is read).
_INT_COLUMNS = ("height", "width", "lung_px")
_FLOAT_COLUMNS = ("lung_fraction", "uncertain_fraction")


def read_rows(lines: Iterable[str], where: str) -> Iterator[dict[str, str]]:
    """The rows of a ledger file (``lines``: its text, line by line).

    Raises:
        DamagedLedger: the file is not one segment wrote whole (other columns, a row cut short
            or too long, a status or number segment never writes).
    """
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != LEDGER_COLUMNS:
        raise DamagedLedger("damaged ledger file (unexpected columns)", where)
    for row in reader:
        problem = _row_problem(row)
        if problem:
            raise DamagedLedger(f"damaged ledger file (line {reader.line_num}: {problem})", where)
        yield row


def _row_problem(row: dict[str, Any]) -> str:
    if None in row or any(value is None for value in row.values()):
        return "a row of the wrong length"
    if not row["key"] or not row["done_at"] or row["status"] not in ("ok", "error"):
        return "no key, no time or an unknown status"
    if row["status"] == "ok":
        try:
            for column in _INT_COLUMNS:
                int(row[column])
            for column in _FLOAT_COLUMNS:
                if not np.isfinite(float(row[column])):
                    raise ValueError
        except ValueError:
            return f"{column} is not a number"
    return ""


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
    """What the ledgers of these settings (any sharding) record as done for ``shard``.

    A damaged ledger file is removed, with one line on stderr, together with the completion
    record of its shard: its images are done again (by this run where they are its own).
    """
    ids = []
    for rel in sink.list(f"{PARTS}/{sid}"):
        if not is_ledger(rel):
            continue
        data = sink.get(rel)
        if data is None:  # deleted meanwhile by an --overwrite
            continue
        try:
            rows = list(read_rows(io.StringIO(data.decode("utf-8"), newline=""), sink.where(rel)))
        except (DamagedLedger, UnicodeDecodeError) as exc:
            problem = exc.problem if isinstance(exc, DamagedLedger) else "damaged ledger file"
            print(f"{printable(sink.where(rel))}: {problem}; removed, its images are done again",
                  file=sys.stderr)  # fmt: skip
            sink.delete([rel, f"{rel.rsplit('/', 1)[0]}/{COMPLETE}"])
            continue
        ids.extend(item_id(row["key"], row["version"]) for row in rows if shard.owns(row["key"]))
    return DoneSet(np.unique(np.array(ids, dtype=np.uint64)))
