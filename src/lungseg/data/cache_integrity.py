"""Is a prepared cache whole? Checks of its files that read no pixels.

``prepare`` rebuilds a damaged cache (it is derived data); the commands that read one
(:func:`lungseg.data.cache.load_cache`) refuse it in one line that says how to rebuild it, instead
of failing deep inside NumPy (``mmap length is greater than file size``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lungseg.core.config import load_yaml
from lungseg.core.errors import LungsegError

#: A cache's manifest: the resolved settings, the source and a fingerprint; written last.
MANIFEST = "prepare.yaml"
#: The arrays of a cache, ``uint8[N, S, S]`` each.
ARRAYS = ("images.npy", "masks.npy")


def cache_damage(path: str | Path) -> str | None:
    """What is wrong with the files of the cache in ``path``, or None when they are whole.

    Checks what costs no reading of the pixels: the manifest parses and agrees with
    ``split.csv``'s rows; each array's header is ``uint8[N, S, S]`` with the manifest's ``N``
    and working size, and the file is exactly as long as that header says (a truncated or
    extended copy). Flipped bits inside the pixel data are not detected.
    """
    path = Path(path)
    try:
        manifest = load_yaml(path / MANIFEST)
        n_images = int(manifest["n_images"])
        size = int(manifest["config"]["preprocess"]["size"])
    except LungsegError as exc:
        return f"{MANIFEST}: {exc.problem}"
    except (KeyError, TypeError, ValueError):
        return f"{MANIFEST}: settings missing"
    try:
        with open(path / "split.csv", newline="", encoding="utf-8") as fh:
            rows = sum(1 for _ in csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"split.csv: {getattr(exc, 'strerror', None) or exc}"
    if rows != n_images:
        return f"split.csv has {rows} rows, the manifest {n_images} images"
    for name in ARRAYS:
        problem = _array_damage(path / name, (n_images, size, size))
        if problem:
            return f"{name}: {problem}"
    return None


def _array_damage(file: Path, shape: tuple[int, ...]) -> str | None:
    fmt = np.lib.format
    try:
        with open(file, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            found, _, dtype = read(fh)
            offset = fh.tell()
    except OSError as exc:
        return exc.strerror or str(exc)
    except (ValueError, EOFError, UnicodeDecodeError):
        return "not a NumPy array file (header unreadable)"
    if dtype != np.uint8 or tuple(found) != shape:
        return f"holds {dtype}{list(found)}, expected uint8{list(shape)}"
    expected = offset + int(np.prod(shape))
    actual = file.stat().st_size
    if actual != expected:
        return f"{actual:,} bytes, expected {expected:,} (truncated or altered)"
    return None
