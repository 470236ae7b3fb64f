"""Finding image/mask pairs in a data source and attaching their metadata.

Two layouts are recognised:

* the COVID-19 Radiography Database: ``<Class>/images/<stem>.<ext>`` +
  ``<Class>/masks/<stem>.<ext>`` (the class is the top folder);
* a generic one: ``images/<stem>.<ext>`` + ``masks/<stem>.<ext>`` or ``masks/<stem>_mask.<ext>``
  (the Shenzhen/Montgomery convention), at the root or one folder down.

Image and mask are matched by stem, so ``images/x.jpg`` pairs with ``masks/x.png``. An optional
``METADATA.csv`` at the root (columns as in the shared COVID set: ``stem, class, patient_id, ...``)
supplies patient ids for grouped splits; without it every image counts as its own patient.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from lungseg.core.errors import LungsegError
from lungseg.data.io import IMAGE_SUFFIXES
from lungseg.storage.sources import DataSource

if TYPE_CHECKING:  # only named in annotations; lungseg.storage.sources reaches back here
    from lungseg.storage.sources import DataSource

METADATA_FILE = "METADATA.csv"


@dataclass
class Record:
    """One image of a dataset (with its mask when it has one)."""

    stem: str
    image_key: str
    mask_key: str | None
    cls: str = "unknown"
    patient_id: str = ""
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Discovery:
    """What :func:`discover` found: usable records and one problem line per bad entry."""

    records: list[Record]
    problems: list[tuple[str, str]]
    has_patient_ids: bool


def discover(source: DataSource, require_masks: bool = True) -> Discovery:
    """List the source and pair each image with its mask.

    Args:
        source: where the files are.
        require_masks: an image without a mask is a problem (training, evaluation); when False
            (segmenting new X-rays) it is a record with ``mask_key=None``.

    Returns:
        Records sorted by (class, stem), and problems ``(key, what is wrong)`` for missing masks,
        masks without an image and duplicate stems.
    """
    keys = source.list_keys()
    images: dict[tuple[str, str], list[str]] = defaultdict(list)
    masks: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key in keys:
        path = PurePosixPath(key)
        if path.suffix.lower() not in IMAGE_SUFFIXES or len(path.parts) < 2:
            continue
        folder = path.parts[-2].lower()
        group = "/".join(path.parts[:-2])
        if folder == "images":
            images[(group, path.stem)].append(key)
        elif folder == "masks":
            stem = path.stem[:-5] if path.stem.endswith("_mask") else path.stem
            masks[(group, stem)].append(key)
    if not images:
        raise LungsegError(
            "no images found; expected <Class>/images/*.png with <Class>/masks/*.png, "
            "or images/ with masks/",
            source.name,
        )
    metadata = _read_metadata(source, keys)
    problems: list[tuple[str, str]] = []
    by_stem: dict[str, list[str]] = defaultdict(list)
    records = []
    for (group, stem), image_keys in sorted(images.items()):
        mask_keys = masks.get((group, stem), [])
        for key in image_keys:
            by_stem[stem].append(key)
        if len(image_keys) > 1:
            continue  # reported below as a duplicate stem
        if len(mask_keys) > 1:
            problems.append((mask_keys[0], f"several masks for image stem {stem!r}: {mask_keys}"))
            continue
        if not mask_keys and require_masks:
            problems.append((image_keys[0], "missing mask (expected one in the masks/ folder)"))
            continue
        meta = metadata.get(stem, {})
        cls = meta.get("class") or (PurePosixPath(group).name if group else "") or "unknown"
        patient = meta.get("patient_id") or ""
        records.append(
            Record(
                stem=stem,
                image_key=image_keys[0],
                mask_key=mask_keys[0] if mask_keys else None,
                cls=cls,
                patient_id=patient,
                meta=meta,
            )
        )
    for stem, stem_keys in sorted(by_stem.items()):
        if len(stem_keys) > 1:
            problems.append(
                (stem_keys[0], f"duplicate stem {stem!r}: also {', '.join(stem_keys[1:])}")
            )
    duplicated = {stem for stem, k in by_stem.items() if len(k) > 1}
    records = [r for r in records if r.stem not in duplicated]
    for (group, stem), mask_keys in sorted(masks.items()):
        if (group, stem) not in images:
            problems.append((mask_keys[0], "mask without an image"))
    has_ids = bool(records) and all(r.patient_id for r in records)
    for r in records:
        if not r.patient_id:
            r.patient_id = f"image:{r.stem}"
    records.sort(key=lambda r: (r.cls, r.stem))
    return Discovery(records=records, problems=problems, has_patient_ids=has_ids)


def _read_metadata(source: DataSource, keys: list[str]) -> dict[str, dict[str, str]]:
    if METADATA_FILE not in keys:
        return {}
    text = source.read_bytes(METADATA_FILE).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "stem" not in reader.fieldnames:
        raise LungsegError(
            f"needs a 'stem' column (found: {', '.join(reader.fieldnames or [])})",
            f"{source.name}/{METADATA_FILE}",
        )
    return {row["stem"]: {k: (v or "") for k, v in row.items()} for row in reader}
