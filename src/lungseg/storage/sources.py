"""Where the X-rays come from: one small interface over a local folder or a blob container.

A data source lists relative keys (``COVID/images/x.png``, always ``/``-separated) and reads
their bytes. ``open_source`` turns what the user typed after ``--data`` into a source:
a folder path (:mod:`lungseg.storage.local`), or ``az://CONTAINER/PREFIX`` for Azure Blob Storage
(see :mod:`lungseg.storage.azure`).
Sources that live remotely are mirrored into a local content cache first, so preparation always
reads from local disk and never downloads a file twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from lungseg.core.errors import LungsegError
from lungseg.storage.local import LocalSource

__all__ = ["DataSource", "LocalSource", "azure_module", "azure_source", "open_source"]


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

    def download(self, keys: Iterable[str]) -> object:
        """Make the keys' files local before many :meth:`local_path` calls.

        A remote source fetches the missing ones in parallel; a local one has nothing to do.

        Returns:
            The source's own report (``AzureSource``: its ``TransferStats``); callers may
            ignore it.
        """
        ...


def open_source(spec: str | Path) -> DataSource:
    """Open one ``--data``: a local folder, or ``az://CONTAINER[/PREFIX]`` (``lungseg[azure]``);
    several are a dataset's business (:func:`lungseg.data.combined.open_data`)."""
    text = str(spec)
    if text.startswith("az://"):
        return azure_source(text)
    if "://" in text:
        raise LungsegError(
            "unsupported data URL; use a local folder or az://CONTAINER/PREFIX", text
        )
    return LocalSource(Path(text))


def azure_source(url: str, **kwargs: Any):
    """:class:`~lungseg.storage.azure.AzureSource` of ``az://CONTAINER/PREFIX``."""
    return azure_module(url).AzureSource.from_url(url, **kwargs)


def azure_module(url: str, doing: str = "reading") -> ModuleType:
    """:mod:`lungseg.storage.azure`, or advice on installing the extra that ``doing`` (reading,
    writing to) ``url`` needs."""
    try:
        import lungseg.storage.azure as azure
    except ImportError as exc:  # the optional extra is missing
        raise LungsegError(
            f"{doing} {url} needs the Azure packages: pip install 'lungseg[azure]' ({exc})"
        ) from None
    return azure
