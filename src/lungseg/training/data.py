"""The data a training run reads: a prepared cache, or a dataset prepared for it first.

A cache is used as it is, unless it was built with other ``prepare`` settings than the run asked
for (``--size``, ``--preprocess``, a YAML ``prepare:`` section), which is refused, naming the
differences. A dataset folder or ``az://`` URL is prepared with the defaults overridden by what
was asked, into ``OUT/../.cache/<name>-<size>-<preset>-<hash>`` unless another cache folder is
given. Under ``torchrun`` the first process on each machine prepares; the others wait for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.core.config import resolve
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import sha256_json
from lungseg.data.cache import PreparedData, cache_name, is_cache, load_cache, prepare
from lungseg.data.settings import PrepareConfig
from lungseg.training.distributed import DistContext, barrier


def training_data(
    data: str | Path | PreparedData,
    wanted: Mapping[str, Any],
    out: Path,
    cache: str | Path | None = None,
    workers: int | None = None,
    ctx: DistContext | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> PreparedData:
    """Open (or prepare) the training data.

    Args:
        data: a prepared cache (folder or :class:`PreparedData`), or a dataset folder /
            ``az://`` URL to prepare.
        wanted: the ``prepare`` settings asked for (a possibly partial mapping).
        out: the run directory (the default cache goes beside it).
        cache: where to prepare a source.
        workers: decoding processes for preparing.
        ctx: the process's place in a ``torchrun`` job.
        progress: show a progress bar while preparing.
        skip_bad: leave bad files of a source out (listed in the cache's ``skipped.csv``).

    Raises:
        LungsegError: a cache built with other settings than ``wanted``.
    """
    ctx = ctx or DistContext()
    if isinstance(data, PreparedData):
        return load_cache(data.path, expect=wanted) if wanted else data
    if is_cache(data):
        return load_cache(data, expect=wanted)
    config = resolve(PrepareConfig, [("prepare settings", wanted)])
    cache = Path(cache) if cache is not None else default_cache(data, out, config)
    if ctx.local_rank != 0:
        barrier(ctx)  # local rank 0 prepares; the others then find the cache ready
    prepared = prepare(
        data, cache, config, workers=workers, skip_bad=skip_bad, progress=progress and ctx.is_main
    )
    if ctx.local_rank == 0:
        barrier(ctx)
    return prepared


def default_cache(data: str | Path, out: Path, config: PrepareConfig) -> Path:
    """``OUT/../.cache/<cache_name>`` (:func:`~lungseg.data.cache.cache_name`)."""
    return out.absolute().parent / ".cache" / cache_name(data, config)


def check_splits(prepared: PreparedData, exclude: Sequence[str] = ()) -> tuple[Any, Any]:
    """The training and validation indices; an empty one is an error naming the cache.

    ``exclude`` (stems or image keys, :attr:`TrainConfig.exclude
    <lungseg.training.config.TrainConfig.exclude>`) leaves those images out of the training
    indices; the validation indices keep every image. A name the data does not hold is an error.
    """
    train_idx, val_idx = prepared.indices("train"), prepared.indices("val")
    if exclude:
        train_idx = train_idx[~np.isin(train_idx, excluded_indices(prepared, exclude))]
        if len(train_idx) == 0:
            raise LungsegError(
                f"train.exclude leaves no training image (it names all "
                f"{len(prepared.indices('train'))} of the training split)",
                prepared.path,
            )
    for split, idx in (("training", train_idx), ("validation", val_idx)):
        if len(idx) == 0:
            counts = ", ".join(f"{s} {len(prepared.indices(s))}" for s in ("train", "val", "test"))
            raise LungsegError(
                f"the {split} split is empty ({counts}); use more images or other split "
                "fractions in 'lungseg prepare'",
                prepared.path,
            )
    return train_idx, val_idx


def excluded_indices(prepared: PreparedData, exclude: Sequence[str]) -> Any:
    """Indices of the images that ``exclude`` names (by stem or by image key)."""
    where: dict[str, list[int]] = {}
    for i, row in enumerate(prepared.rows):
        for name in {row["stem"], row.get("image_key", "")} - {""}:
            where.setdefault(name, []).append(i)
    unknown = [name for name in exclude if name not in where]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise LungsegError(
            f"train.exclude names {len(unknown)} image(s) that the data does not hold: {shown} "
            "(give stems or image keys as in the cache's split.csv)",
            prepared.path,
        )
    return np.array(sorted({i for name in exclude for i in where[name]}), dtype=int)


def split_digest(stems: Sequence[str], train_idx: Sequence[int], val_idx: Sequence[int]) -> str:
    """The digest of a train/validation split that checkpoints record (``data.split``)."""
    return sha256_json(
        {s: [stems[i] for i in idx] for s, idx in (("train", train_idx), ("val", val_idx))}
    )
