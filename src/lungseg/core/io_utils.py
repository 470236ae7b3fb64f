"""Small file helpers shared by every stage: atomic writes, content hashing, the user cache."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

#: Largest image file read (bytes): far above any X-ray within the decoders' 100-megapixel
#: limit, far below what would exhaust a machine's memory.
MAX_FILE_BYTES = 1 << 30


def read_regular(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (a symbolic link to one is fine), at most ``limit`` of them.

    A named pipe, a device (``/dev/zero`` behind a ``.png`` link) or a socket would block the
    reader or never end: it is refused before a byte is read, and so is a file over ``limit``.

    Raises:
        OSError: the file cannot be opened, is not a regular file, or is larger than ``limit``
            (``strerror`` says which; ``filename`` is ``path``).
    """
    # O_NONBLOCK: opening a named pipe that no one writes would otherwise wait forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a named pipe, device or socket)",
                          str(path))  # fmt: skip
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"file larger than the {limit >> 20} MiB limit", str(path))
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise OSError(errno.EFBIG, f"file larger than the {limit >> 20} MiB limit", str(path))
    return data


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` so readers never see a half-written file.

    The data goes to a temporary file in the same folder, is flushed to disk (unless
    ``durable`` is False: then a caller that writes many files makes them durable at once, see
    :func:`sync_filesystem`), and replaces ``path`` in one rename; a crash leaves either the
    old file or the new one, and a failure leaves no temporary file behind.

    Raises:
        OSError: the folder or file cannot be written (read-only, full, no permission...), with
            ``path`` as its ``filename`` — also when ``write`` turned the OS's error into its
            own (PyTorch reports a full disk as ``RuntimeError: ... unexpected pos``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _naming(exc, path.parent) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # the temporary name means nothing to the user: name the file
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    recorder = _WriteErrors(os.fdopen(fd, "wb"))
    try:
        with recorder.file as fh:
            write(recorder)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if recorder.error is not None and exc is not recorder.error:
            raise _naming(recorder.error, path) from None
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise


class _WriteErrors:
    """A file object that remembers the ``OSError`` its writes raised, for the libraries that
    replace it with their own exception."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name when it names none (writes and fsync don't)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


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


class CsvWriter:
    """``csv.DictWriter`` with ``\\n`` line ends that also quotes a cell holding a carriage
    return (Python's minimal quoting quotes only the characters of the line end, so a bare
    ``\\r`` in a file name would end the row for every reader), and writes the bytes of a local
    name that are not UTF-8 as ``\\xNN`` (the file stays UTF-8).

    Args:
        fh: a text file opened with ``newline=""``.
        columns: the header; keys of a row not in it are left out.
    """

    def __init__(self, fh: IO[str], columns: Sequence[str]) -> None:
        import csv

        self.columns = list(columns)
        options = {"lineterminator": "\n", "extrasaction": "ignore"}
        self._minimal = csv.DictWriter(fh, self.columns, **options)
        self._quoted = csv.DictWriter(fh, self.columns, quoting=csv.QUOTE_ALL, **options)

    def writeheader(self) -> None:
        self._minimal.writeheader()

    def writerow(self, row: Mapping[str, Any]) -> None:
        # A local name that is not UTF-8 (Python holds its bytes as surrogates) as ``\xNN``.
        row = {
            k: v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            if isinstance(v, str)
            else v
            for k, v in row.items()
        }
        cr = any(isinstance(row.get(c), str) and "\r" in row[c] for c in self.columns)
        (self._quoted if cr else self._minimal).writerow(row)

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text with a header; ``columns`` default to the first row's keys.

    Keys of a row that are not in ``columns`` are left out.
    """
    import io

    buf = io.StringIO()
    writer = CsvWriter(buf, list(columns) if columns is not None else list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def sha256_json(obj: object) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    import json

    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


#: Where lungseg keeps what it can make again (Azure downloads, ONNX exports); default
#: ``~/.cache/lungseg``.
ENV_CACHE_DIR = "LUNGSEG_CACHE_DIR"


def user_cache(kind: str) -> Path:
    """``$LUNGSEG_CACHE_DIR/<kind>`` (default ``~/.cache/lungseg/<kind>``)."""
    base = os.environ.get(ENV_CACHE_DIR)
    return (Path(base) if base else Path.home() / ".cache" / "lungseg") / kind
