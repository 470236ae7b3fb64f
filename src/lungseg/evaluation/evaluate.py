"""``lungseg evaluate``: score a trained or shipped model on a prepared dataset.

The model sees the dataset exactly as it saw its training data: the images are prepared (or the
cache reused) with the preprocessing recorded in its checkpoint, and the probabilities become masks
with the recorded postprocessing (or the presets asked for). Scores are computed at the model's
working size against the ground-truth masks resized to it, or, with ``size``, at a common size
for every model: masks are postprocessed at the working size and resized the way
:meth:`~lungseg.inference.segmenter.Segmenter.predict` resizes them (probabilities bilinearly), so
models trained at 128 and at 256 are scored against the same masks.

Writes into ``OUT``:

* ``metrics.json`` - ``model``, its mask ``convention`` and the data's (``data_convention``,
  as its prepare settings state it), ``n_images``, ``dice_mean``, ``iou_mean``, ``mse_mean``,
  ``hd95_mean``, ``dice_ci95`` and every other summary of
  :class:`~lungseg.evaluation.metrics.MetricAccumulator`, plus the inference time per image and,
  when several postprocessing presets were asked for, a summary per preset
  (``postprocess_presets``);
* ``per_image.csv`` - ``stem, dice, iou, mse, hd95, precision, recall, accuracy`` and the
  ground-truth-free ``uncertain_fraction`` (:mod:`lungseg.inference.quality`), whose rank
  correlation with the error is ``uncertainty_error_spearman`` in ``metrics.json``, with the model's
  ``review_threshold`` and the share of images it flags; ``convention_check``
  (:func:`~lungseg.evaluation.conventions.convention_check`) says whether the model's
  masks are consistently larger or smaller than the data's, the sign of another mask convention;
* with ``save_masks``, ``masks/<stem>.png`` - the binary masks (0/255) at the working size.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungseg.core.config import to_dict
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_bytes, atomic_write_text, csv_text
from lungseg.data.cache import PreparedData, cache_name, is_cache, load_cache, prepare
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.data.settings import PrepareConfig
from lungseg.evaluation.conventions import convention_check
from lungseg.evaluation.metrics import MetricAccumulator
from lungseg.inference import road
from lungseg.inference.encode import mask_png
from lungseg.inference.postprocessing import (
    PostprocessConfig,
    list_postprocess_presets,
    postprocess_batch,
)
from lungseg.inference.quality import error_rank_correlation, review_reason, uncertain_fraction
from lungseg.inference.segmenter import Segmenter, load_model, upscale_mask


@dataclass
class Evaluation:
    """What :func:`evaluate` computed (also written to ``out``)."""

    metrics: dict[str, Any]
    per_image: list[dict[str, Any]]
    out: Path | None
    probabilities: np.ndarray
    data: PreparedData
    indices: np.ndarray


def run_data(segmenter: Segmenter, where: Path) -> Path:
    """The prepared cache a model was trained on, as its checkpoint records it."""
    cache = ((segmenter.info or {}).get("data") or {}).get("cache")
    if not cache or not is_cache(cache):
        raise LungsegError(
            f"the run's prepared data ({cache}) is not available; pass --data to say what to "
            "evaluate on",
            where,
        )
    return Path(cache)


def _dataset_for(
    config: PreprocessConfig,
    data: str | Path,
    cache_root: Path,
    split: PrepareConfig | None,
    skip_bad: bool = False,
) -> PreparedData:
    """A cache of ``data`` prepared with ``config`` (reused when it already matches)."""
    split_settings = split or PrepareConfig()
    want = PrepareConfig(
        config,
        split_settings.val_fraction,
        split_settings.test_fraction,
        split_settings.seed,
        split_settings.convention,
    )
    if is_cache(data):
        cached = load_cache(data)
        if to_dict(cached.config.preprocess) == to_dict(config):
            return cached
        source = cached.source
        if not source or ("://" not in source and not Path(source).exists()):
            raise LungsegError(
                "cache was prepared with other preprocessing than the model's, and its source "
                f"({cached.source}) is not available to prepare it again; pass the source folder",
                data,
            )
        data, want = (
            cached.source,
            PrepareConfig(
                config,
                cached.config.val_fraction,
                cached.config.test_fraction,
                cached.config.seed,
                cached.config.convention,
            ),
        )

    _require_masks(data)
    return prepare(
        data, cache_root / cache_name(data, want), want, skip_bad=skip_bad, progress=False
    )


def _require_masks(data: str | Path) -> None:
    """One clear line for a folder of images without any masks (instead of one per image)."""
    from lungseg.data.combined import open_data
    from lungseg.data.dataset import discover

    found = discover(open_data(data), require_masks=False)
    if found.records and not any(r.mask_key for r in found.records):
        raise LungsegError(
            f"no ground-truth masks found for its {len(found.records)} images (expected "
            "<Class>/masks/<stem>.png beside <Class>/images/); evaluation needs masks; to "
            "segment images without masks use 'lungseg segment'",
            data,
        )


def evaluate(
    model: str | Path | Segmenter,
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    postprocess: Sequence[str] | None = None,
    save_masks: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    cache_root: str | Path | None = None,
    split_config: PrepareConfig | None = None,
    size: int | None = None,
    tta: bool = False,
    skip_bad: bool = False,
) -> Evaluation:
    """Evaluate ``model`` and write the results into ``out``.

    Args:
        model: a run directory, a checkpoint, a shipped model name, or a loaded :class:`Segmenter`.
        out: output folder (None: compute only).
        data: dataset folder, ``az://`` URL or prepared cache; default: the run's own data.
        split: ``test``, ``val``, ``train`` or ``all``; default ``test`` for the run's own data,
            ``all`` for ``data``.
        postprocess: preset names to report (``all`` for every preset); the first one is the
            main result. Default: the postprocessing recorded in the checkpoint.
        save_masks: write the binary masks as PNG.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass (default: the model's
            :attr:`~lungseg.inference.segmenter.Segmenter.batch_size`).
        cache_root: where caches prepared for evaluation go (default: ``out/.cache`` or a temp dir).
        split_config: split settings when ``data`` is a source folder (default: lungseg's
            default), and the convention of its masks (``convention``).
        size: score at ``size x size`` instead of the model's working size (to compare models
            trained at different sizes against the same masks).
        tta: average each prediction over test-time augmentation views
        (:mod:`lungseg.inference.tta`). skip_bad: when ``data`` must be prepared, leave its bad
        files out instead of stopping.
    """
    run_dir = Path(model) if isinstance(model, str | Path) and Path(model).is_dir() else None
    if run_dir is not None and not (run_dir / "best.pt").is_file():
        raise LungsegError(
            "run directory has no best.pt checkpoint (did training finish an epoch?)", run_dir
        )
    segmenter = model if isinstance(model, Segmenter) else load_model(model, device)
    if tta:
        segmenter = segmenter.with_tta()
    if data is None:
        if run_dir is None:
            raise LungsegError("--data is needed to evaluate a checkpoint file or shipped model")
        data = run_data(segmenter, run_dir)
        split = split or "test"
    split = split or "all"
    out = Path(out) if out is not None else None
    if cache_root is None:
        import tempfile

        cache_root = out / ".cache" if out is not None else Path(tempfile.mkdtemp())
    cache_root = Path(cache_root)
    datasets = [
        _dataset_for(cfg, data, cache_root, split_config, skip_bad) for _, cfg in segmenter.networks
    ]
    reference = datasets[0]
    if size is not None and size != segmenter.size:
        if size < 16:
            raise LungsegError(f"evaluation size must be at least 16 pixels, got {size}")
        # Only its masks are used: the ground truth prepared at the scoring size.
        reference = _dataset_for(
            dataclasses.replace(segmenter.preprocess, size=size),
            data,
            cache_root,
            split_config,
            skip_bad,
        )
        if reference.stems != datasets[0].stems:
            raise LungsegError(
                f"the dataset prepared at {size}x{size} lists other images than at the model's "
                f"{segmenter.size}x{segmenter.size}; prepare it again",
                data,
            )
    score_size = reference.size
    indices = reference.indices(split)
    if len(indices) == 0:
        raise LungsegError(f"the {split!r} split of {data} has no images; nothing to evaluate")
    batch_size = batch_size or segmenter.batch_size
    prob, seconds = _probabilities(segmenter, datasets, indices, batch_size)
    target = np.asarray(reference.masks[indices]).astype(bool)
    stems = [reference.rows[i]["stem"] for i in indices]
    spacing = _spacings(reference, indices)
    recorded_name = (segmenter.info or {}).get("postprocess_preset") or "recorded"
    presets = _presets(postprocess, segmenter.postprocess, recorded_name)
    results: dict[str, tuple[dict, list, np.ndarray]] = {}
    rescale = score_size != segmenter.size
    scored_prob = np.stack([_resize(p, score_size) for p in prob]) if rescale else prob
    for name, config in presets:
        pred = postprocess_batch(prob, config)
        if rescale:
            pred = np.stack([upscale_mask(m, (score_size, score_size)) for m in pred])
        acc = MetricAccumulator()
        acc.update(scored_prob, pred, target, stems, spacing)
        results[name] = (acc.compute(), acc.per_image(), pred)
    main_name = presets[0][0]
    summary, rows, pred = results[main_name]
    # Uncertainty comes from the probabilities at the working size, as 'segment' computes it.
    uncertainty = uncertain_fraction(prob)
    threshold = segmenter.review_threshold
    for row, value, mask in zip(rows, uncertainty, pred, strict=True):
        row["uncertain_fraction"] = float(value)
        row["review"] = review_reason(mask, float(value), threshold)
    metrics = {
        "model": segmenter.name,
        "convention": segmenter.convention,
        "data_convention": reference.config.convention,
        "checkpoint": segmenter.source,
        "checkpoints": [m for m in (segmenter.info or {}).get("members", [])] or [segmenter.source],
        "data": str(data),
        "scored_cache": str(reference.path),
        "split": split,
        **summary,
        "postprocess": main_name,
        "postprocess_config": to_dict(presets[0][1]),
        "preprocess": to_dict(segmenter.preprocess),
        "size": score_size,
        "model_size": segmenter.size,
        "inference_ms_per_image": 1000.0 * seconds / len(indices),
        "device": getattr(segmenter.networks[0][0], "device", "cpu (onnxruntime)"),
        "precision": getattr(segmenter.networks[0][0], "precision", "float32"),
        "tta": (segmenter.info or {}).get("tta"),
        "uncertainty_error_spearman": error_rank_correlation(
            uncertainty, np.array([row["dice"] for row in rows])
        ),
        "review_threshold": threshold,
        "review_flagged_share": float(np.mean([bool(row["review"]) for row in rows])),
        "convention_check": convention_check(
            pred, target, segmenter.convention, reference.config.convention
        ),
    }
    if len(results) > 1:
        metrics["postprocess_presets"] = {
            name: {k: r[0][k] for k in ("dice_mean", "dice_ci95", "iou_mean", "hd95_mean")}
            for name, r in results.items()
        }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "metrics.json", json.dumps(_jsonable(metrics), indent=2) + "\n")
        atomic_write_text(out / "per_image.csv", _rows_csv(rows))
        if save_masks:
            (out / "masks").mkdir(exist_ok=True)
            for stem, mask in zip(stems, pred, strict=True):
                atomic_write_bytes(out / "masks" / f"{stem}.png", mask_png(mask, stem))
    return Evaluation(metrics, rows, out, scored_prob, reference, indices)


def _probabilities(
    segmenter: Segmenter, datasets: list[PreparedData], indices: np.ndarray, batch_size: int
) -> tuple[np.ndarray, float]:
    """Working-size probabilities of the prepared images ``indices`` through the road's forward
    pass (:func:`lungseg.inference.road.forward`): each network reads its own cache, prepared
    with its preprocessing, which is what :func:`~lungseg.inference.road.prepare` makes of the
    image files."""
    for dataset in datasets[1:]:
        if dataset.stems != datasets[0].stems:
            raise LungsegError("ensemble members' prepared datasets list different images")

    def inputs(chunk: np.ndarray) -> list[list[np.ndarray]]:
        per_network = [np.asarray(dataset.images[chunk]) for dataset in datasets]
        return [[images[k] for images in per_network] for k in range(len(chunk))]

    # One untimed image first: the first call pays for kernel selection and allocations,
    # which on a small test split would dominate the time per image.
    road.forward(segmenter, inputs(indices[:1]))
    total = np.zeros((len(indices), segmenter.size, segmenter.size), np.float32)
    seconds = 0.0
    for start in range(0, len(indices), batch_size):
        batch = inputs(indices[start : start + batch_size])
        began = time.perf_counter()
        total[start : start + len(batch)] = road.forward(segmenter, batch)
        seconds += time.perf_counter() - began
    return total, seconds


def _resize(prob: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(prob, (size, size), interpolation=cv2.INTER_LINEAR)


def _spacings(data: PreparedData, indices: np.ndarray) -> np.ndarray | None:
    values = [data.spacing(int(i)) for i in indices]
    if any(v is None for v in values):
        return None
    return np.array(values, dtype=np.float64)


def _presets(
    names: Sequence[str] | None, recorded: PostprocessConfig, recorded_name: str
) -> list[tuple[str, PostprocessConfig]]:
    if not names:
        return [(recorded_name, recorded)]
    if list(names) == ["all"]:
        names = list_postprocess_presets()
    return [(name, PostprocessConfig.preset(name)) for name in names]


PER_IMAGE_COLUMNS = ("stem", "dice", "iou", "mse", "hd95", "precision", "recall", "accuracy",
                     "uncertain_fraction", "review")  # fmt: skip
#: Text columns of per_image.csv; the others are numbers.
TEXT_COLUMNS = ("stem", "review")


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    rounded = [{k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return csv_text(rounded, PER_IMAGE_COLUMNS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def load_metrics(folder: str | Path) -> dict[str, Any]:
    """Read ``metrics.json`` of an evaluation folder."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise LungsegError("no metrics.json (run 'lungseg evaluate' first)", folder)
    return json.loads(path.read_text())


def read_per_image(folder: str | Path) -> list[dict[str, Any]]:
    """Read ``per_image.csv`` of an evaluation folder (metric columns as floats)."""
    with open(Path(folder) / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (v if k in TEXT_COLUMNS else float(v)) for k, v in row.items()} for row in rows]


__all__ = ["Evaluation", "evaluate", "load_metrics", "read_per_image", "run_data"]
