"""Where the X-rays come from: one small interface over a local folder or a blob container.

A data source lists relative keys (``COVID/images/x.png``, always ``/``-separated) and reads
their bytes. ``open_source`` turns what the user typed after ``--data`` into a source:
a folder path, or ``az://CONTAINER/PREFIX`` for Azure Blob Storage (see :mod:`lungseg.data.azure`).
Sources that live remotely are mirrored into a local content cache first, so preparation always
reads from local disk and never downloads a file twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lungseg.errors import LungsegError


class DataSource(Protocol):
    """Read-only access to a dataset's files.

    Attributes:
        name: how the source is shown to users (a path or ``az://container/prefix``);
            never contains credentials.
    """

    name: str

    def list_keys(self) -> list[str]:
        """All file keys, relative, ``/``-separated, sorted."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The file's content."""
        ...

    def stat(self, key: str) -> tuple[int, str]:
        """``(size in bytes, version tag)``; the tag changes whenever the content may have."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file with the key's content (sources that are remote download it first)."""
        ...


@dataclass
class LocalSource:
    """A folder on local disk."""

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
        return (self.root / key).read_bytes()

    def stat(self, key: str) -> tuple[int, str]:
        st = (self.root / key).stat()
        return st.st_size, str(st.st_mtime_ns)

    def local_path(self, key: str) -> Path:
        return self.root / key


def open_source(spec: str | Path) -> DataSource:
    """Open ``--data``: a local folder, or ``az://CONTAINER[/PREFIX]`` (``lungseg[azure]``)."""
    text = str(spec)
    if text.startswith("az://"):
        try:
            from lungseg.data.azure import AzureSource
        except ImportError as exc:  # the optional extra is missing
            raise LungsegError(
                f"reading {text} needs the Azure packages: pip install 'lungseg[azure]' ({exc})"
            ) from None
        return AzureSource.from_url(text)
    if "://" in text:
        raise LungsegError(
            "unsupported data URL; use a local folder or az://CONTAINER/PREFIX", text
        )
    return LocalSource(Path(text))
