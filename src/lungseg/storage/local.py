"""A dataset folder on local disk, as a :class:`~lungseg.storage.sources.DataSource`.

This module imports nothing else of lungseg's data sources, so both the opener in
:mod:`lungseg.storage.sources` and the Azure upload (which publishes a folder) can use it without
importing each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import read_regular


@dataclass
class LocalSource:
    """A folder on local disk; hidden files and folders (``.name``) are left out."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.exists():
            raise LungsegError("data folder not found", self.root)
        if not self.root.is_dir():
            raise LungsegError("expected a folder of images and masks, got a file", self.root)
        self.name = str(self.root)

    def list_keys(self) -> list[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            for fn in filenames:
                if not fn.startswith("."):
                    keys.append((rel / fn).as_posix())
        return sorted(keys)

    def read_bytes(self, key: str) -> bytes:
        return read_regular(self.root / key)

    def stat(self, key: str) -> tuple[int, str]:
        st = (self.root / key).stat()
        return st.st_size, str(st.st_mtime_ns)

    def local_path(self, key: str) -> Path:
        return self.root / key

    def download(self, keys: Iterable[str]) -> None:
        """Nothing to fetch: the files are already on local disk."""
