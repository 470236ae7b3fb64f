"""Publishing a dataset folder to ``az://CONTAINER/PREFIX``, sending only what changed.

:func:`put_file` is the unit: one local file to one blob name, skipped when the blob already has
the same size and MD5, stored with its ``Content-MD5`` and content type.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from collections.abc import Mapping
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import ContentSettings

from lungseg.core.errors import LungsegError
from lungseg.storage.azure.connection import DEFAULT_WORKERS, Container, parse_url
from lungseg.storage.azure.transfer import TransferStats, transfer
from lungseg.storage.local import LocalSource

_HASH_CHUNK = 1 << 20
#: What an upload to a missing container is told to do.
_CREATE_HINT = "; pass --create-container to create it"


def upload(
    local_dir: str | Path,
    url: str,
    create_container: bool = False,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> TransferStats:
    """Upload a dataset folder to ``az://CONTAINER/PREFIX``, keeping its layout.

    Files whose blob already has the same size and MD5 are skipped, so uploading again sends only
    what changed. Hidden files and folders (``.name``) are left out, as when reading a folder.
    Each blob gets its MD5 (``Content-MD5``) and content type.

    Args:
        local_dir: the dataset folder.
        url: ``az://CONTAINER/PREFIX``.
        create_container: create the container when it does not exist.
        workers: parallel uploads.
        progress: show a progress bar (or a summary line when stderr is not a terminal).

    Raises:
        LungsegError: a missing folder or container, rejected credentials, an unreachable
            endpoint (one line, naming the container).
    """
    start = time.perf_counter()
    if workers < 1:
        raise LungsegError(f"workers must be at least 1, got {workers}")
    location = parse_url(url)
    local = LocalSource(Path(local_dir))
    keys = local.list_keys()
    if not keys:
        raise LungsegError("no files to upload", local.root)
    container = Container.open(location, workers, if_missing=_CREATE_HINT)
    if create_container:
        container.call("creating", lambda: _create(container))
    remote = blob_fingerprints(container)
    sizes = {k: (local.root / k).stat().st_size for k in keys}
    return transfer(
        f"upload {location.url}",
        sizes,
        lambda key: put_file(container, key, local.root / key, sizes[key], remote),
        workers=workers,
        progress=progress,
        kept="{moved} files were uploaded before, so running again sends only the rest",
        start=start,
    )


def _create(container: Container) -> None:
    try:
        container.client.create_container()
    except ResourceExistsError:
        pass


def blob_fingerprints(container: Container) -> dict[str, tuple[int, bytes]]:
    """``{key: (size, MD5)}`` of the blobs under the container's prefix (MD5 ``b""`` if unknown).

    Keys are blob names relative to the prefix, as :func:`put_file` takes them.
    """
    prefix = container.location.prefix
    found = container.call(
        "listing", lambda: list(container.client.list_blobs(name_starts_with=prefix or None))
    )
    return {
        b.name[len(prefix) :]: (b.size, bytes(b.content_settings.content_md5 or b"")) for b in found
    }


def put_file(
    container: Container,
    key: str,
    path: Path,
    size: int,
    remote: Mapping[str, tuple[int, bytes]],
) -> bool:
    """Upload ``path`` as blob ``PREFIX + key`` unless that blob is identical.

    Args:
        container: where to put it.
        key: the blob name relative to the container's prefix.
        path: the local file.
        size: its size in bytes.
        remote: what :func:`blob_fingerprints` found, to skip identical blobs.

    Returns:
        True when the file was sent, False when the blob already held it.
    """
    md5 = _file_md5(path)
    if remote.get(key) == (size, md5):
        return False
    settings = ContentSettings(
        content_type=mimetypes.guess_type(key)[0] or "application/octet-stream",
        content_md5=bytearray(md5),
    )
    name = container.location.prefix + key
    with open(path, "rb") as fh:
        container.call(
            f"uploading {key} to",
            lambda: container.client.upload_blob(
                name, fh, length=size, overwrite=True, content_settings=settings
            ),
        )
    return True


def _file_md5(path: Path) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            md5.update(chunk)
    return md5.digest()
