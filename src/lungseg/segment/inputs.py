"""The X-rays ``segment`` reads: local files and folders, ``az://CONTAINER/PREFIX``, or the
instances a DICOMweb query finds (``dicomweb://HOST:PORT/PATH?FILTERS``), listed
lazily (an archive's listing is never held in memory) in a stable order.

Every image has a **key**: its path relative to the input (``COVID/images/x.png``; with
several local inputs, relative to the folder they have in common). Keys are unique by
construction, name the image's outputs (``masks/<key>.png``), decide its shard, and are what
the ledger records as done. Below a given folder, sub-folders named ``masks`` are skipped: in a
dataset laid out as ``<Class>/images`` + ``<Class>/masks`` they hold ground truth, not X-rays;
a ``masks`` folder given itself is searched like any other. Hidden files and folders are
skipped. A file is an image by its suffix (:data:`IMAGE_SUFFIXES`), or, named as DICOM files
are without one (:func:`dicom_name`), when it holds a DICOM file (the first 132 bytes are read;
one ranged read for a blob). An output inside an input is refused (segment would write into
the dataset); one reached there through a symbolic link is still never listed. A local name
whose bytes are not UTF-8 has them written ``\\xNN`` in its key (:mod:`lungseg.segment.names`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Any, Protocol

from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import read_regular
from lungseg.data.dicom_decode import is_dicom_file
from lungseg.data.io import IMAGE_SUFFIXES
from lungseg.segment.names import key_text


@dataclass(frozen=True)
class Item:
    """One input image.

    Attributes:
        key: its path relative to the input, ``/``-separated.
        name: where it is, as shown to users and in the ``file`` column (a path or URL).
        version: changes whenever the content may have (local: size and modification time;
            Azure: the ETag), so a changed input is done again on the next run.
        ref: what the reader needs to fetch it.
    """

    key: str
    name: str
    version: str
    ref: Any = None


class Inputs(Protocol):
    """Where the images come from."""

    description: str

    def items(self) -> Iterator[Item]:
        """Every image, lazily, in a stable order."""
        ...

    def read(self, item: Item) -> bytes:
        """The image file's content."""
        ...


def is_image_key(key: str) -> bool:
    """An image file (by suffix) that is not hidden and not under a ``masks`` folder."""
    path = PurePosixPath(key)
    return path.suffix.lower() in IMAGE_SUFFIXES and _listed(path)


def dicom_name(key: str) -> bool:
    """A name DICOM files have without an image suffix: none (DICOM media's ``IM000001``: PS3.12
    file IDs have no extension) or a UID's last number (dcmtk's storescp writes
    ``DX.1.2.840...``); not the media's ``DICOMDIR`` (an index, no image), nor a hidden file or
    one under ``masks``."""
    path = PurePosixPath(key)
    suffix = path.suffix[1:]
    return (not suffix or suffix.isdigit()) and path.name.upper() != "DICOMDIR" and _listed(path)


def _listed(path: PurePosixPath) -> bool:
    """Not hidden, and not ground truth under a ``masks`` folder."""
    return not any(p.startswith(".") for p in path.parts) and "masks" not in (
        p.lower() for p in path.parts[:-1]
    )


class LocalInputs:
    """Files and folders on local disk.

    Args:
        paths: files (taken whatever their suffix) and folders (searched recursively).
        exclude: a folder never to list (the output folder, when it lies inside an input).
    """

    def __init__(self, paths: Sequence[str | Path], exclude: str | Path | None = None) -> None:
        given: dict[str, Path] = {}
        for path in map(Path, paths):
            if not path.exists():
                raise LungsegError("input not found", path)
            given.setdefault(os.path.abspath(path), path)
        folders = [a for a, p in given.items() if p.is_dir()]
        # An input inside a folder that is itself an input would be listed twice.
        self._inputs = sorted(
            (a, p)
            for a, p in given.items()
            if not any(a != f and a.startswith(f.rstrip(os.sep) + os.sep) for f in folders)
        )
        if len(self._inputs) == 1:
            only, path = self._inputs[0]
            self.root = only if path.is_dir() else os.path.dirname(only)
        else:
            self.root = os.path.commonpath(
                [a if p.is_dir() else os.path.dirname(a) for a, p in self._inputs]
            )
        self._exclude = os.path.abspath(exclude) if exclude is not None else None
        self.description = ", ".join(str(p) for p in map(Path, paths))

    def items(self) -> Iterator[Item]:
        for absolute, given in self._inputs:
            if not given.is_dir():
                yield self._item(absolute, str(given), os.stat(absolute))
                continue
            for dirpath, dirnames, filenames in os.walk(absolute):
                dirnames[:] = sorted(
                    d
                    for d in dirnames
                    if not d.startswith(".")
                    and d.lower() != "masks"
                    and os.path.join(dirpath, d) != self._exclude
                )
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    if name.startswith(".") or not (
                        Path(name).suffix.lower() in IMAGE_SUFFIXES
                        or (dicom_name(name) and _holds_dicom(full))
                    ):
                        continue
                    shown = os.path.join(str(given), os.path.relpath(full, absolute))
                    try:
                        stat = os.stat(full)
                    except OSError:  # vanished, or a broken link: reading it will say why
                        stat = None
                    yield self._item(full, shown, stat)

    def _item(self, absolute: str, shown: str, stat: os.stat_result | None) -> Item:
        key = key_text(Path(os.path.relpath(absolute, self.root)).as_posix())
        version = f"{stat.st_size}-{stat.st_mtime_ns}" if stat is not None else "missing"
        return Item(key, shown, version, absolute)

    def read(self, item: Item) -> bytes:
        return read_regular(item.ref)


def _holds_dicom(path: str) -> bool:
    """A local file that holds a DICOM file (``DICM`` after the 128-byte preamble)."""
    try:
        if not S_ISREG(os.stat(path).st_mode):  # a named pipe would block the listing
            return False
        with open(path, "rb") as fh:
            return is_dicom_file(fh.read(132))
    except OSError:
        return False


class AzureInputs:
    """The images under ``az://CONTAINER/PREFIX`` (``lungseg[azure]``), read into memory.

    Args:
        url: ``az://CONTAINER/PREFIX``.
        exclude: a blob-name prefix never to list (``az://`` output inside the input).
        workers: connections for parallel reads.
    """

    def __init__(self, url: str, exclude: str | None = None, workers: int = 8) -> None:
        from lungseg.storage.sources import azure_source

        self._source = azure_source(url, workers=workers, progress=False)
        self._exclude = exclude
        self.description = self._source.name

    def items(self) -> Iterator[Item]:
        container = self._source.location.container
        for blob in self._source.iter_blobs():
            if not is_image_key(blob.key) and not (
                dicom_name(blob.key)
                and blob.size >= 132
                and is_dicom_file(self._source.head(blob, 132))
            ):
                continue
            if self._exclude and f"{container}/{blob.name}".startswith(self._exclude):
                continue
            yield Item(blob.key, f"{self._source.name}/{blob.key}", blob.etag, blob)

    def read(self, item: Item) -> bytes:
        """The blob's content.

        Raises:
            OSError: the blob was deleted or replaced since it was listed: like a local file
                that vanished, it is an errors.csv row (done again by the next run, as its
                version changed) and the run goes on.
        """
        from lungseg.storage.azure.connection import BlobGone

        try:
            return self._source.fetch(item.ref)
        except BlobGone:
            raise OSError(errno.ENOENT, "the blob was deleted or replaced since it was listed",
                          item.name) from None  # fmt: skip

    def nothing_found(self) -> str:
        """Why nothing was listed, naming what the container holds instead."""
        return self._source._nothing_found()


class DicomWebInputs:
    """The instances that a QIDO-RS query finds, fetched by WADO-RS
    (:mod:`lungseg.storage.dicomweb`).

    An instance's key is ``STUDY/SERIES/SOP.dcm`` (its UIDs: unique, and never changed by a
    PACS), so its outputs are ``masks/STUDY/SERIES/SOP.dcm.png``...; its version is constant,
    since a DICOM instance with a given UID does not change.

    Args:
        url: ``dicomweb://HOST:PORT/PATH?FILTERS`` or ``dicomwebs://...``.
    """

    def __init__(self, url: str) -> None:
        from lungseg.storage.dicomweb import DicomWebClient, parse_url

        root, self._filters = parse_url(url)
        self._client = DicomWebClient(root)
        self.description = url

    def items(self) -> Iterator[Item]:
        from lungseg.storage.dicomweb import DicomWebError

        try:
            for ref in self._client.instances(self._filters):
                key = f"{ref.study}/{ref.series}/{ref.sop}.dcm"
                where = (
                    f"{self._client}/studies/{ref.study}/series/{ref.series}/instances/{ref.sop}"
                )
                yield Item(key, where, "dicom", ref)
        except DicomWebError as exc:
            raise LungsegError(f"QIDO-RS failed: {exc}", self.description) from None

    def read(self, item: Item) -> bytes:
        from lungseg.storage.dicomweb import DicomWebError

        try:
            return self._client.retrieve(item.ref)
        except DicomWebError as exc:  # the run stops; what is done stays recorded
            raise LungsegError(f"WADO-RS failed: {exc}", item.name) from None


def open_inputs(
    inputs: Sequence[str | Path], out: str | Path | None = None, workers: int = 8
) -> Inputs:
    """Local files and folders, one ``az://CONTAINER/PREFIX`` or one ``dicomweb://`` query;
    ``out`` is never listed."""
    texts = [str(i) for i in inputs]
    remote = [t for t in texts if "://" in t]
    if not remote:
        exclude = None if out is None or "://" in str(out) else out
        if exclude is not None:
            _refuse_out_inside(os.path.abspath(exclude), [os.path.abspath(t) for t in texts])
        return LocalInputs(inputs, exclude=exclude)
    if len(texts) > 1:
        raise LungsegError(
            "give one az://CONTAINER/PREFIX or dicomweb:// query as the input, or local files and "
            "folders, not both "
            "(segment several prefixes one after the other into the same --out)"
        )
    if remote[0].startswith(("dicomweb://", "dicomwebs://")):
        return DicomWebInputs(remote[0])
    if not remote[0].startswith("az://"):
        raise LungsegError(
            "unsupported input URL; use local files and folders, az://CONTAINER/PREFIX or "
            "dicomweb://HOST:PORT/PATH?FILTERS",
            remote[0],
        )
    exclude = None
    if out is not None and str(out).startswith("az://"):
        exclude = str(out)[len("az://") :].strip("/") + "/"
        _refuse_out_inside(exclude.rstrip("/"), [remote[0][len("az://") :].strip("/")], "/")
    return AzureInputs(remote[0], exclude=exclude, workers=workers)


def _refuse_out_inside(out: str, inputs: list[str], sep: str = os.sep) -> None:
    """An output in an input folder (or prefix) would write masks into the dataset."""
    for given in inputs:
        if out == given or out.startswith(given.rstrip(sep) + sep):
            raise LungsegError(
                f"the output {out} lies inside the input {given}: segment would write into "
                "the dataset; choose an output outside it"
            )


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files in ``inputs`` (files and folders, searched as :class:`LocalInputs` does), in
    a stable order.

    Raises:
        LungsegError: an input is missing, or no image was found.
    """
    local = LocalInputs(inputs)
    files = [Path(item.name) for item in local.items()]
    if not files:
        raise LungsegError(no_images(local.description))
    return files


def no_images(where: str) -> str:
    return (
        f"no images found in {where} (looked for {', '.join(IMAGE_SUFFIXES)}, and for DICOM "
        "files named without a suffix)"
    )
