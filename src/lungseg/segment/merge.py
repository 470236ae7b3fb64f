"""Merging the ledgers of every run and shard into ``measurements.csv``, ``errors.csv`` and
``qc.json`` (``lungseg segment-merge``, and the end of a run that completes the output).

The merge is deterministic: rows are sorted by key and, of several rows of one key (an image done
again because its input changed, or by another sharding), the latest wins. Memory stays flat:
ledger files are sorted, so they are merged as streams (in rounds through temporary files when
there are more than :data:`FAN_IN`), and only the masks to review first are kept.
"""

from __future__ import annotations

import heapq
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import CsvWriter
from lungseg.segment.ledger import (
    COMPLETE,
    ERROR_COLUMNS,
    ERRORS,
    LEDGER_COLUMNS,
    MANIFEST,
    MEASUREMENT_COLUMNS,
    MEASUREMENTS,
    PARTS,
    QC,
    DamagedLedger,
    is_ledger,
    order,
    output_names,
    read_manifest,
    read_rows,
)
from lungseg.segment.names import one_line, spreadsheet_cell
from lungseg.segment.shard import Shard
from lungseg.storage.sink import LocalSink, Sink, open_sink

#: Masks listed in ``qc.json`` to review first.
QC_TOP = 50
#: Ledger files merged at once (more are merged in rounds through temporary files).
FAN_IN = 128


@dataclass
class MergeResult:
    """What the merged tables hold.

    Attributes:
        n_images: images recorded (segmented + failed).
        n_segmented: rows of ``measurements.csv``.
        n_failed: rows of ``errors.csv``.
        most_uncertain: ``(uncertain_fraction, key, file)`` of the masks to review first.
        shards: the number of shards of the latest sharding.
        pending: shards of it that have not completed (empty: the output is complete).
        flagged: ``(key, reason)`` of the masks flagged for review (column ``review``), the
            :data:`QC_TOP` worst: highest ``uncertain_fraction`` first, then by key.
        n_flagged: how many masks are flagged.
    """

    n_images: int
    n_segmented: int
    n_failed: int
    most_uncertain: list[tuple[float, str, str]]
    shards: int
    pending: list[int]
    flagged: list[tuple[str, str]] = field(default_factory=list)
    n_flagged: int = 0

    @property
    def complete(self) -> bool:
        return not self.pending


def completion(sink: Sink, sid: str, count: int | None = None) -> tuple[int, list[int]]:
    """``(N, shards of N not complete)`` for ``count`` shards, or by default for the sharding
    that is complete (else the one nearest to it)."""
    done: dict[int, set[int]] = {}
    for rel in sink.list(f"{PARTS}/{sid}"):
        shard = _shard_folder(rel.split("/")[-2]) if Path(rel).name == COMPLETE else None
        if shard is not None:
            done.setdefault(shard.count, set()).add(shard.index)
    if count is not None:
        return count, sorted(set(range(count)) - done.get(count, set()))
    if not done:
        return 1, [0]
    for count, indexes in sorted(done.items()):
        if len(indexes) == count:
            return count, []
    count = max(done, key=lambda c: len(done[c]) / c)
    return count, sorted(set(range(count)) - done[count])


def _shard_folder(name: str) -> Shard | None:
    """The shard a ledger folder ``shard-K-of-N`` belongs to; None for a name segment never
    writes (N out of bounds, not numbers)."""
    index, _, count = name.removeprefix("shard-").partition("-of-")
    try:
        return Shard(int(index), int(count))
    except (ValueError, LungsegError):
        return None


def merge(sink: Sink, top: int = QC_TOP, shards: int | None = None) -> MergeResult:
    """Merge every ledger of the output's settings into ``measurements.csv``, ``errors.csv``
    and ``qc.json`` (deterministic: sorted by key, the latest row of a key wins).

    Memory stays flat: ledger files are merged as sorted streams, and only the ``top`` most
    uncertain masks are kept. ``shards``: the sharding whose completion ``qc.json`` reports
    (default: see :func:`completion`).

    Raises:
        LungsegError: the output holds no segment results.
    """
    manifest = read_manifest(sink)
    if manifest is None:
        raise LungsegError(f"no lungseg segment results here (no {MANIFEST})", sink.name)
    sid = manifest["settings_id"]
    ledgers = [rel for rel in sink.list(f"{PARTS}/{sid}") if is_ledger(rel)]
    shards, pending = completion(sink, sid, shards)
    problems: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    worst: list[tuple[float, str, str, str]] = []  # (-uncertain_fraction, key, file, reason)
    candidates: list[tuple[float, str, str]] = []
    n_ok = n_failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="lungseg-merge-") as tmp:
            folder = Path(tmp)
            paths = _local_copies(sink, ledgers, folder)
            names = dict(zip(paths, map(sink.where, ledgers), strict=True))
            measurements, errors = folder / "measurements.csv", folder / "errors.csv"
            with (
                open(measurements, "w", newline="", encoding="utf-8") as mfh,
                open(errors, "w", newline="", encoding="utf-8") as efh,
            ):
                ok_rows = CsvWriter(mfh, MEASUREMENT_COLUMNS)
                bad_rows = CsvWriter(efh, ERROR_COLUMNS)
                ok_rows.writeheader()
                bad_rows.writeheader()
                for row in _latest_per_key(_sorted_rows(paths, folder, names)):
                    if row["status"] == "ok":
                        n_ok += 1
                        ok_rows.writerow(_cells(row))
                        candidates.append(
                            (-float(row["uncertain_fraction"]), row["key"], row["file"])
                        )
                        if row.get("review"):
                            reasons[row["review"].split(" (")[0]] += 1
                            worst.append((candidates[-1][0], row["key"], row["file"],
                                          row["review"]))  # fmt: skip
                            if len(worst) > 4 * top:
                                worst = sorted(worst)[:top]
                        if len(candidates) > 4 * top:
                            candidates = sorted(candidates)[:top]
                    else:
                        n_failed += 1
                        bad_rows.writerow(_cells(row))
                        problems[row["problem"].split(" (")[0]] += 1
            _put_file(sink, MEASUREMENTS, measurements)
            if n_failed:
                _put_file(sink, ERRORS, errors)
            else:
                sink.delete([ERRORS])
    except DamagedLedger as exc:
        raise DamagedLedger(
            f"{exc.problem}; run lungseg segment again with the same settings: it removes the "
            "file and does its images again",
            exc.path,
        ) from None
    ranked = [(-u, key, file) for u, key, file in sorted(candidates)[:top]]
    worst = sorted(worst)[:top]
    qc = {
        "settings_id": sid,
        "images": n_ok + n_failed,
        "segmented": n_ok,
        "failed": n_failed,
        "complete": not pending,
        "pending_shards": pending,
        "errors_by_problem": dict(problems.most_common()),
        "flagged_for_review": sum(reasons.values()),
        "flagged_by_reason": dict(reasons.most_common()),
        "flagged_worst_first": [
            {
                "rank": i,
                "key": key,
                "file": file,
                "review": why,
                "uncertain_fraction": -u,
                "mask": output_names(key)["mask"],
            }
            for i, (u, key, file, why) in enumerate(worst, start=1)
        ],  # fmt: skip
        "review_first": [
            {
                "rank": i,
                "key": key,
                "file": file,
                "uncertain_fraction": u,
                "mask": output_names(key)["mask"],
            }
            for i, (u, key, file) in enumerate(ranked, start=1)
        ],  # fmt: skip
    }
    sink.put(QC, (json.dumps(qc, indent=1) + "\n").encode())
    return MergeResult(
        n_ok + n_failed,
        n_ok,
        n_failed,
        ranked,
        shards,
        pending,
        [(key, why) for _, key, _, why in worst],
        sum(reasons.values()),
    )


#: Columns of the merged tables that hold names (a spreadsheet must not run them as formulas).
_NAME_COLUMNS = ("key", "file", "problem")


def _cells(row: dict[str, str]) -> dict[str, str]:
    cells = {**row, **{c: spreadsheet_cell(row[c]) for c in _NAME_COLUMNS}}
    cells["problem"] = spreadsheet_cell(one_line(row["problem"]))
    return cells


def _local_copies(sink: Sink, rels: list[str], folder: Path) -> list[Path]:
    if isinstance(sink, LocalSink):
        return [sink.root / rel for rel in rels]
    paths = [folder / f"ledger-{i:06d}.csv" for i in range(len(rels))]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(sink.get_to, rels, paths))
    return paths


def _put_file(sink: Sink, rel: str, path: Path) -> None:
    def copy(fh) -> None:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, fh)

    sink.put_stream(rel, copy)


def _rows_of(path: Path, where: str) -> Iterator[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            yield from read_rows(fh, where)
    except UnicodeDecodeError:
        raise DamagedLedger("damaged ledger file (not UTF-8)", where) from None


def _sorted_rows(
    paths: list[Path], folder: Path, names: dict[Path, str]
) -> Iterator[dict[str, str]]:
    """The rows of sorted ledger files as one sorted stream, at most :data:`FAN_IN` files open
    (``names``: the ledger files' names for messages)."""
    round_ = 0
    while len(paths) > FAN_IN:
        merged = []
        for start in range(0, len(paths), FAN_IN):
            out = folder / f"round{round_}-{start // FAN_IN:06d}.csv"
            part = paths[start : start + FAN_IN]
            rows = heapq.merge(*(_rows_of(p, names.get(p, str(p))) for p in part), key=order)
            with open(out, "w", newline="", encoding="utf-8") as fh:
                writer = CsvWriter(fh, LEDGER_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            merged.append(out)
        paths, round_ = merged, round_ + 1
    yield from heapq.merge(*(_rows_of(p, names.get(p, str(p))) for p in paths), key=order)


def _latest_per_key(rows: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
    last = None
    for row in rows:
        if last is not None and row["key"] != last["key"]:
            yield last
        last = row
    if last is not None:
        yield last


def merge_outputs(out: str | Path) -> MergeResult:
    """``lungseg segment-merge OUT``: merge every shard's ledger into ``measurements.csv``,
    ``errors.csv`` and ``qc.json`` (also when some shards are not done: the tables then hold
    what is done so far, and :attr:`MergeResult.pending` names the missing shards)."""
    return merge(open_sink(out))
