"""Small file helpers shared by every stage: atomic writes and content hashing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` so readers never see a half-written file.

    The data goes to a temporary file in the same folder, is flushed to disk (unless
    ``durable`` is False: then a caller that writes many files makes them durable at once, see
    :func:`sync_filesystem`), and replaces ``path`` in one rename; a crash leaves either the
    old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda fh: fh.write(data), durable)


def sync_filesystem(folder: Path) -> None:
    """Flush every file written on ``folder``'s file system to disk (Linux ``syncfs``; elsewhere
    ``sync``): one call instead of an ``fsync`` per file."""
    import ctypes

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text with a header; ``columns`` default to the first row's keys.

    Keys of a row that are not in ``columns`` are left out.
    """
    import csv
    import io

    buf = io.StringIO()
    fieldnames = list(columns) if columns is not None else list(rows[0])
    writer = csv.DictWriter(buf, fieldnames, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def sha256_json(obj: object) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    import json

    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()
