"""``lungseg prepare``: decode, preprocess and split a dataset once into a cache of uint8 arrays.

A cache folder holds:

* ``images.npy`` - ``uint8[N, S, S]`` preprocessed images;
* ``masks.npy`` - ``uint8[N, S, S]`` lung masks in {0, 1};
* ``split.csv`` - ``stem, class, patient_id, split`` (then the source keys, original size and
  pixel spacing), one row per array index, so anyone can audit the split;
* ``prepare.yaml`` - the resolved settings, the source and a fingerprint of settings + files;
  written last, so a cache without it is incomplete and is rebuilt;
* ``skipped.csv`` - with ``--skip-bad``, the files left out and why;
* ``.lungseg.lock`` - the lock a build holds (:mod:`lungseg.core.locking`): a second ``prepare`` of
  the same cache waits for the first and then reuses what it built.

Preparing again with the same files and settings reuses the cache; anything else rebuilds it.
Training and evaluation read the arrays (memory-mapped), so no model decodes a PNG twice.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungseg._version import __version__
from lungseg.core.config import from_dict, load_yaml, save_yaml, to_dict
from lungseg.core.errors import BadInputError, LungsegError, quiet_third_party
from lungseg.core.io_utils import atomic_write, atomic_write_text, csv_text, sha256_json
from lungseg.core.locking import exclusive
from lungseg.core.progress import track
from lungseg.core.workers import WorkerDied, Workers
from lungseg.data.cache_integrity import MANIFEST, cache_damage
from lungseg.data.combined import open_data
from lungseg.data.dataset import METADATA_FILE, Record, discover
from lungseg.data.io import decode_image, decode_mask, read_file
from lungseg.data.preprocessing import PreprocessConfig, preprocess, resize_mask
from lungseg.data.settings import PrepareConfig, disagreements
from lungseg.data.split import SPLITS, split_records
from lungseg.storage.sources import DataSource

#: Mask and image may differ in size (299 vs 256 in the database) but not in shape beyond this.
ASPECT_TOLERANCE = 0.05
#: Below this many images, worker processes cost more to start than they save.
MIN_IMAGES_PER_WORKER = 128


@dataclass
class PreparedData:
    """A prepared dataset, as loaded from its cache folder.

    Attributes:
        path: the cache folder.
        images: ``uint8[N, S, S]`` (memory-mapped).
        masks: ``uint8[N, S, S]`` in {0, 1} (memory-mapped).
        rows: one dict per image (``stem``, ``class``, ``patient_id``, ``split``, ...).
        config: the settings it was prepared with.
        source: where the files came from.
    """

    path: Path
    images: np.ndarray
    masks: np.ndarray
    rows: list[dict[str, str]]
    config: PrepareConfig
    source: str

    @property
    def stems(self) -> list[str]:
        return [r["stem"] for r in self.rows]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Array indices of ``split`` (``train``, ``val``, ``test`` or ``all``)."""
        if split == "all":
            return np.arange(len(self.rows))
        if split not in SPLITS:
            raise LungsegError(
                f"unknown split {split!r}; valid splits: {', '.join((*SPLITS, 'all'))}"
            )
        return np.array([i for i, r in enumerate(self.rows) if r["split"] == split], dtype=int)

    def spacing(self, index: int) -> tuple[float, float] | None:
        """Pixel spacing (mm) of image ``index`` at the working size, when the file stated it."""
        row = self.rows[index]
        if not row.get("spacing_row"):
            return None
        scale_r = float(row["orig_height"]) / self.size
        scale_c = float(row["orig_width"]) / self.size
        return float(row["spacing_row"]) * scale_r, float(row["spacing_col"]) * scale_c


@dataclass
class _Job:
    index: int
    image_path: str
    mask_path: str | None
    image_name: str
    mask_name: str | None


def _process(job: _Job, config: PreprocessConfig) -> tuple[int, Any, Any, dict, list]:
    """Decode + preprocess one pair in a worker. Returns problems instead of raising."""
    problems: list[tuple[str, str]] = []
    try:
        decoded = decode_image(read_file(job.image_path, job.image_name), job.image_name)
        image = preprocess(decoded.pixels, config)
    except LungsegError as exc:
        return job.index, None, None, {}, [(job.image_name, exc.problem)]
    except Exception as exc:  # OpenCV/Pillow failures on malformed files
        return job.index, None, None, {}, [(job.image_name, f"cannot decode image ({exc})")]
    mask = None
    if job.mask_path is not None:
        try:
            binary = decode_mask(read_file(job.mask_path, job.mask_name), job.mask_name)
            h, w = decoded.pixels.shape
            mh, mw = binary.shape
            if abs((mw / mh) / (w / h) - 1) > ASPECT_TOLERANCE:
                raise LungsegError(
                    f"mask is {mw}x{mh} but its image is {w}x{h} (different aspect ratio)"
                )
            mask = resize_mask(binary.view(np.uint8), (config.size, config.size))
        except LungsegError as exc:
            problems.append((job.mask_name, exc.problem))
        except Exception as exc:
            problems.append((job.mask_name, f"cannot decode mask ({exc})"))
    info = {
        "orig_height": decoded.pixels.shape[0],
        "orig_width": decoded.pixels.shape[1],
        "mode": decoded.mode,
        "spacing_row": decoded.spacing[0] if decoded.spacing else "",
        "spacing_col": decoded.spacing[1] if decoded.spacing else "",
    }
    return job.index, image, mask, info, problems


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; nested threads only contend
    quiet_third_party()


def cache_name(data: str | Path, config: PrepareConfig) -> str:
    """The one name of a cache of ``data`` prepared with ``config``:
    ``<source name>-<size>-<preset>-<hash of the source and every setting>``, so two caches with
    any setting apart never share a folder, and people can tell them apart by eye."""
    text = str(data).rstrip("/")
    name = text.rsplit("/", 1)[-1] or "data"
    pre = config.preprocess
    where = os.path.abspath(text) if "://" not in text else text
    digest = sha256_json({"data": where, "config": to_dict(config)})[:8]
    return f"{name}-{pre.size}-{pre.preset}-{digest}"


def fingerprint(source: DataSource, records: list[Record], config: PrepareConfig) -> str:
    """Hash of the settings and of every file's key, size and version tag."""
    files = []
    for r in records:
        for key in (r.image_key, r.mask_key):
            if key is not None:
                files.append((key, *source.stat(key)))
    if METADATA_FILE in set(source.list_keys()):
        files.append((METADATA_FILE, *source.stat(METADATA_FILE)))
    # format 2: EXIF orientation applied when decoding (a cache from before may hold films sideways)
    return sha256_json({"config": to_dict(config), "files": files, "format": 2})


def prepare(
    data: str | Path | DataSource,
    out: str | Path,
    config: PrepareConfig | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    force: bool = False,
) -> PreparedData:
    """Build (or reuse) the cache of ``data`` in ``out``.

    Args:
        data: a folder, ``az://container/prefix``, or a :class:`DataSource`.
        out: the cache folder.
        config: preprocessing and split settings (defaults: preset ``seed``, size 256).
        workers: decoding processes (default: one per core; 1 decodes in this process).
        skip_bad: leave bad files out (listed in ``skipped.csv``) instead of stopping.
        progress: show a progress bar.
        force: rebuild even when a matching cache exists.

    Raises:
        BadInputError: listing every bad file, when ``skip_bad`` is False.
    """
    config = config or PrepareConfig()
    source = open_data(data) if isinstance(data, str | Path | list | tuple) else data
    out = Path(out)
    found = discover(source)
    problems = [(_display(source, key), problem) for key, problem in found.problems]
    records, unreadable = _readable(source, found.records)
    problems += unreadable
    found = dataclasses.replace(found, records=records)
    if not records and not problems:
        raise LungsegError("no image/mask pairs found", source.name)
    digest = fingerprint(source, records, config)
    if not force and _reusable(out, digest, skip_bad, bool(problems)):
        return load_cache(out)
    # Another process building the same cache is waited for; its cache is then reused.
    with exclusive(out, "prepare", wait=True):
        if not force and _reusable(out, digest, skip_bad, bool(problems)):
            return load_cache(out)
        damage = cache_damage(out) if is_cache(out) else None
        if damage:  # derived data: say so, and build it again
            print(f"{out}: damaged cache ({damage}); rebuilding it", file=sys.stderr)
        _build(source, found, problems, out, config, digest, workers, skip_bad, progress)
    return load_cache(out)


def _readable(source: DataSource, records: list[Record]) -> tuple[list[Record], list]:
    """The records whose files can be read, and a problem for each file that cannot (a
    symlink loop, a dangling link, no permission): one bad file like any other."""
    kept, problems = [], []
    for record in records:
        try:
            for key in (record.image_key, record.mask_key):
                if key is not None:
                    source.stat(key)
        except OSError as exc:
            problems.append((_display(source, key), f"cannot read file ({exc.strerror or exc})"))
        else:
            kept.append(record)
    return kept, problems


def _reusable(out: Path, digest: str, skip_bad: bool, bad_now: bool) -> bool:
    """The cache in ``out`` is whole and was built from the same files and settings. A cache
    that left bad files out is only reused by a run that also skips them."""
    if not is_cache(out) or cache_damage(out):
        return False
    manifest = load_yaml(out / MANIFEST)
    accepted = skip_bad or not (bad_now or manifest.get("n_skipped"))
    return manifest.get("fingerprint") == digest and accepted


def _build(source, found, problems, out, config, digest, workers, skip_bad, progress) -> None:
    records = found.records
    source.download([k for r in records for k in (r.image_key, r.mask_key) if k])
    size = config.preprocess.size
    images = np.zeros((len(records), size, size), np.uint8)
    masks = np.zeros((len(records), size, size), np.uint8)
    infos: list[dict] = [{} for _ in records]
    bad: set[int] = set()
    jobs = [
        _Job(
            i,
            str(source.local_path(r.image_key)),
            str(source.local_path(r.mask_key)) if r.mask_key else None,
            _display(source, r.image_key),
            _display(source, r.mask_key) if r.mask_key else None,
        )
        for i, r in enumerate(records)
    ]
    for index, image, mask, info, errs in track(
        _run(jobs, config.preprocess, workers, source.name),
        len(jobs),
        "prepare",
        enabled=progress,
    ):
        if errs:
            problems.extend(errs)
            bad.add(index)
            continue
        images[index] = image
        masks[index] = mask
        infos[index] = info
    if problems and not skip_bad:
        raise BadInputError(
            problems, hint="Fix or remove these files, or pass --skip-bad to leave them out."
        )
    keep = [i for i in range(len(records)) if i not in bad]
    if not keep:
        raise LungsegError("no usable image/mask pairs left after skipping bad files", source.name)
    records = [records[i] for i in keep]
    images, masks = images[keep], masks[keep]
    infos = [infos[i] for i in keep]
    splits = split_records(records, config.val_fraction, config.test_fraction, config.seed)
    rows = [
        {
            "stem": r.stem,
            "class": r.cls,
            "patient_id": r.patient_id,
            "split": s,
            "image_key": r.image_key,
            "mask_key": r.mask_key or "",
            **{k: str(v) for k, v in info.items()},
        }
        for r, s, info in zip(records, splits, infos, strict=True)
    ]
    _write(out, images, masks, rows, problems, config, source, digest, found.has_patient_ids)


def _display(source: DataSource, key: str) -> str:
    return f"{source.name.rstrip('/')}/{key}"


def _run(jobs: list[_Job], config: PreprocessConfig, workers: int | None, name: str):
    if workers is None:
        workers = os.cpu_count() or 1
        workers = max(1, min(workers, len(jobs) // MIN_IMAGES_PER_WORKER))
    if workers <= 1:
        for job in jobs:
            yield _process(job, config)
        return
    # lungseg's own worker processes, not multiprocessing's: those would run the caller's main
    # script again, and a script without a main guard would wait for its own lock for ever.
    with Workers(workers, init=_worker_init) as pool:
        try:
            yield from pool.map(_process, jobs, config)
        except WorkerDied:
            raise LungsegError(
                "a worker process died twice while decoding the images (out of memory?)",
                name,
            ) from None


def _write(out, images, masks, rows, problems, config, source, digest, has_ids) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the cache is incomplete until the manifest is back
    atomic_write(out / "images.npy", lambda fh: np.save(fh, images))
    atomic_write(out / "masks.npy", lambda fh: np.save(fh, masks))
    atomic_write_text(out / "split.csv", csv_text(rows))
    if problems:
        atomic_write_text(
            out / "skipped.csv", csv_text([{"file": f, "problem": p} for f, p in problems])
        )
    else:
        (out / "skipped.csv").unlink(missing_ok=True)
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    save_yaml(
        {
            "lungseg_version": __version__,
            "source": source.name,
            "n_images": len(rows),
            "split_counts": counts,
            "grouped_by_patient": has_ids,
            "n_skipped": len(problems),
            "config": to_dict(config),
            "fingerprint": digest,
        },
        out / MANIFEST,
    )


def is_cache(path: str | Path) -> bool:
    """True when ``path`` is a prepared cache (its manifest, written last, is there); whether
    its files are whole is :func:`cache_damage`'s question."""
    return (Path(path) / MANIFEST).is_file()


def load_cache(
    path: str | Path, expect: Mapping[str, Any] | PrepareConfig | None = None
) -> PreparedData:
    """Open a cache folder written by :func:`prepare`.

    Args:
        path: the cache folder.
        expect: ``prepare`` settings the cache must have been built with: a whole
            :class:`PrepareConfig`, or a partial mapping (:func:`~lungseg.data.settings.asked`).

    Raises:
        LungsegError: the folder is not a complete cache, or was built with other settings.
    """
    path = Path(path)
    if not is_cache(path):
        raise LungsegError(
            f"not a prepared cache (no {MANIFEST}); run 'lungseg prepare --data SRC --out {path}'",
            path,
        )
    damage = cache_damage(path)
    if damage:
        raise LungsegError(
            f"damaged cache ({damage}); rebuild it with 'lungseg prepare --data "
            f"{_recorded_source(path)}{_recorded_flags(path)} --out {path}'",
            path,
        )
    manifest = load_yaml(path / MANIFEST)
    config = from_dict(PrepareConfig, manifest["config"], f"{path / MANIFEST}:config")
    if isinstance(expect, PrepareConfig):
        expect = to_dict(expect)
    differ = disagreements(expect or {}, config)
    if differ:
        raise LungsegError(
            f"cache was prepared with other settings ({'; '.join(differ)}); prepare it again or "
            "point --data at the source folder",
            path,
        )
    with open(path / "split.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    images = np.load(path / "images.npy", mmap_mode="r")
    masks = np.load(path / "masks.npy", mmap_mode="r")
    if len(images) != len(rows) or masks.shape != images.shape:
        raise LungsegError(
            "cache is inconsistent (arrays and split.csv differ); re-run prepare", path
        )
    return PreparedData(path, images, masks, rows, config, manifest.get("source", ""))


def _recorded_flags(path: Path) -> str:
    """`` --size N`` as the manifest records it: a cache rebuilt at the default size would no
    longer match the runs that used it ("" where the manifest cannot say)."""
    try:
        size = load_yaml(path / MANIFEST)["config"]["preprocess"]["size"]
    except (LungsegError, KeyError, TypeError):
        return ""
    return f" --size {size}" if isinstance(size, int) and not isinstance(size, bool) else ""


def _recorded_source(path: Path) -> str:
    """The source a cache was prepared from, as its manifest records it (``SRC`` if unknown)."""
    try:
        return str(load_yaml(path / MANIFEST).get("source") or "SRC")
    except LungsegError:
        return "SRC"
