"""The local content cache of files downloaded from Azure Blob Storage: where, how big, clearing.

:class:`lungseg.storage.azure.AzureSource` keeps every downloaded blob under
``cache_root()/<account>/<container>/<xx>/<sha256 of endpoint, container, name, ETag>.<ext>``,
so a second run downloads nothing. A blob replaced in the container gets a new ETag and a new
file; the old one stays until the cache is cleared. This module needs no Azure packages: it only
reads and deletes local files, so ``lungseg cache`` works wherever lungseg is installed.

Unfinished downloads are ``.<name>.<random>.part`` files beside the finished ones (a download
killed with SIGKILL cannot remove its own); they count and are cleared like the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import user_cache


def cache_root() -> Path:
    """The local content cache of downloaded blobs (``$LUNGSEG_CACHE_DIR/azure``, default
    ``~/.cache/lungseg/azure``)."""
    return user_cache("azure")


@dataclass(frozen=True)
class CacheUsage:
    """What one container's cached files take.

    Attributes:
        account: storage account (as a folder name).
        container: container name.
        files: cached files, unfinished downloads included.
        bytes: their total size.
        partial: unfinished downloads among ``files``.
        newest: modification time (epoch seconds) of the most recent download.
    """

    account: str
    container: str
    files: int
    bytes: int
    partial: int
    newest: float


def _containers(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(c for a in root.iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir())


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def cache_usage(root: Path | None = None) -> list[CacheUsage]:
    """Files and bytes per account and container in the cache (empty when there is none).

    Args:
        root: the cache folder; default :func:`cache_root`.
    """
    usage = []
    for folder in _containers(root or cache_root()):
        stats = [(p, p.stat()) for p in _files(folder)]
        usage.append(
            CacheUsage(
                account=folder.parent.name,
                container=folder.name,
                files=len(stats),
                bytes=sum(s.st_size for _, s in stats),
                partial=sum(p.name.endswith(".part") for p, _ in stats),
                newest=max((s.st_mtime for _, s in stats), default=0.0),
            )
        )
    return usage


def clear_cache(
    root: Path | None = None,
    *,
    container: str | None = None,
    older_than_days: float | None = None,
) -> tuple[int, int]:
    """Delete cached files; the next read downloads what it needs again.

    Args:
        root: the cache folder; default :func:`cache_root`.
        container: only this container's files (in every account).
        older_than_days: only files downloaded more than this many days ago.

    Returns:
        ``(files, bytes)`` deleted.
    """
    if older_than_days is not None and older_than_days < 0:
        raise LungsegError(f"--older-than must be 0 or more days, got {older_than_days}")
    root = root or cache_root()
    folders = [f for f in _containers(root) if container is None or f.name == container]
    if container is not None and not folders:
        known = sorted({f.name for f in _containers(root)})
        raise LungsegError(
            f"no cached files of container {container!r} in {root}; cached containers: "
            + (", ".join(known) or "none")
        )
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    files = removed = 0
    for folder in folders:
        for path in _files(folder):
            stat = path.stat()
            if cutoff is not None and stat.st_mtime >= cutoff:
                continue
            path.unlink(missing_ok=True)
            files += 1
            removed += stat.st_size
        for sub in sorted(folder.rglob("*"), reverse=True) + [folder, folder.parent]:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
    return files, removed
