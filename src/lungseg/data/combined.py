"""Several dataset folders as one data source (``lungseg prepare --data A --data B``).

Each folder's keys appear under its own top folder (the folder's name: ``shenzhen/Normal/...``),
so every image's source stays in its key and the split, stratified by class, is made per class
of each source. Their ``METADATA.csv`` files are read as one: the rows of all of them, each
``patient_id`` prefixed with its folder's name so that two sources' patients never merge.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from lungseg.core.errors import LungsegError
from lungseg.data.dataset import METADATA_FILE
from lungseg.storage.sources import DataSource, open_source


class CombinedSource:
    """The union of several :class:`~lungseg.storage.sources.DataSource` objects."""

    def __init__(self, sources: list) -> None:
        names = [Path(s.name.rstrip("/")).name or "data" for s in sources]
        if len(set(names)) != len(names):
            raise LungsegError(
                "several data folders share a name; give folders with different names",
                " + ".join(s.name for s in sources),
            )
        self.parts = dict(zip(names, sources, strict=True))
        self.name = " + ".join(s.name for s in sources)

    def _split(self, key: str) -> tuple[object, str]:
        top, _, rest = key.partition("/")
        if top not in self.parts or not rest:
            raise LungsegError("no such file in the combined data", key)
        return self.parts[top], rest

    def _has_metadata(self) -> list[str]:
        return [n for n, s in self.parts.items() if METADATA_FILE in set(s.list_keys())]

    def list_keys(self) -> list[str]:
        keys = [f"{n}/{k}" for n, s in self.parts.items() for k in s.list_keys()]
        return sorted(keys + ([METADATA_FILE] if self._has_metadata() else []))

    def read_bytes(self, key: str) -> bytes:
        if key == METADATA_FILE:
            return self._metadata().encode()
        source, rest = self._split(key)
        return source.read_bytes(rest)

    def stat(self, key: str) -> tuple[int, str]:
        if key == METADATA_FILE:
            tags = [self.parts[n].stat(METADATA_FILE) for n in self._has_metadata()]
            return sum(size for size, _ in tags), "+".join(tag for _, tag in tags)
        source, rest = self._split(key)
        return source.stat(rest)

    def local_path(self, key: str) -> Path:
        source, rest = self._split(key)
        return source.local_path(rest)

    def download(self, keys: Iterable[str]) -> None:
        by_part: dict[str, list[str]] = {}
        for key in keys:
            top, _, rest = key.partition("/")
            by_part.setdefault(top, []).append(rest)
        for top, rests in by_part.items():
            self.parts[top].download(rests)

    def _metadata(self) -> str:
        rows, columns = [], ["stem"]
        for name in self._has_metadata():
            text = self.parts[name].read_bytes(METADATA_FILE).decode("utf-8-sig")
            for row in csv.DictReader(io.StringIO(text)):
                if row.get("patient_id"):
                    row["patient_id"] = f"{name}:{row['patient_id']}"
                rows.append(row)
                columns += [c for c in row if c not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()


def open_data(spec: str | Path | list[str | Path]) -> DataSource:
    """Open ``--data``: one folder or URL (:func:`~lungseg.storage.sources.open_source`), or
    several as one :class:`CombinedSource`."""
    if isinstance(spec, list | tuple):
        if len(spec) == 1:
            return open_source(spec[0])
        return CombinedSource([open_source(s) for s in spec])
    return open_source(spec)
