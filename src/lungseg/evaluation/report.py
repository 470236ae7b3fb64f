"""The comparison report: which model segments lungs best, with statistics.

Built from run directories alone (``history.csv``, ``summary.json``, ``best.pt``) and their
evaluation folders (``metrics.json``, ``per_image.csv``, ``masks/``), so ``lungseg compare
--from-runs`` can rebuild it without training. Writes ``report.md`` (figures next to it in
``figures/``) and a self-contained ``report.html`` (figures embedded), both rendered from the
templates ``lungseg/templates/report.{md,html}.j2``: this module computes what they show.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.core.config import from_dict
from lungseg.core.errors import LungsegError
from lungseg.core.io_utils import atomic_write_bytes, atomic_write_text
from lungseg.core.render import render
from lungseg.data.preprocessing import PreprocessConfig
from lungseg.evaluation.evaluate import load_metrics, read_per_image
from lungseg.evaluation.plots import (
    MASK_COLOUR_NAME,
    TRUTH_COLOUR_NAME,
    comparison_curves,
    png_bytes,
    read_history,
    sample_grid,
)
from lungseg.evaluation.statistics import paired_wilcoxon

ALPHA = 0.05
FIGURE_DPI = 110


@dataclass
class Entry:
    """One row of the comparison: a trained model and one evaluation of it (``metrics.json``
    says which split it scored)."""

    label: str
    run_dir: Path
    eval_dir: Path
    metrics: dict[str, Any]
    per_image: list[dict[str, Any]]
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def dice_by_stem(self) -> dict[str, float]:
        return {r["stem"]: r["dice"] for r in self.per_image}


def load_entry(run_dir: str | Path, eval_dir: str | Path, label: str | None = None) -> Entry:
    """Read a run directory and its evaluation folder."""
    run_dir, eval_dir = Path(run_dir), Path(eval_dir)
    metrics = load_metrics(eval_dir)
    history = read_history(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else []
    summary = {}
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    return Entry(
        label or run_dir.name, run_dir, eval_dir, metrics, read_per_image(eval_dir), history,
        summary,
    )  # fmt: skip


def load_checkpoint_entry(eval_dir: str | Path, label: str | None = None) -> Entry:
    """An evaluation of a model without a run directory (a shipped model, a checkpoint file):
    the training history and summary come from the checkpoint the evaluation recorded."""
    eval_dir = Path(eval_dir)
    metrics = load_metrics(eval_dir)
    history: list[dict[str, float]] = []
    summary: dict[str, Any] = {}
    paths = [p for p in metrics.get("checkpoints") or [metrics.get("checkpoint")] if p]
    paths = [p for p in paths if str(p).endswith(".pt")]
    from lungseg.models import count_parameters
    from lungseg.models.checkpoint import load_checkpoint, model_from_checkpoint

    for path in paths:
        ckpt = load_checkpoint(path)
        rows = ckpt.get("history", [])
        if len(paths) == 1:  # an ensemble has no training curve of its own
            history = [{k: float(v) for k, v in row.items()} for row in rows]
            summary["best_epoch"] = ckpt.get("best_epoch")
            summary["epochs"] = (ckpt.get("train_config") or {}).get("epochs", len(rows))
        n_params = count_parameters(model_from_checkpoint(ckpt))
        summary["parameters"] = summary.get("parameters", 0) + n_params
        seconds = sum(row.get("seconds", 0.0) for row in rows)
        summary["train_seconds"] = summary.get("train_seconds", 0.0) + seconds
    name = label or metrics.get("model", eval_dir.name)
    return Entry(name, eval_dir, eval_dir, metrics, read_per_image(eval_dir), history, summary)


def paired_tests(entries: list[Entry]) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank on per-image Dice for every pair, Holm-adjusted p-values.

    Only images present in both evaluations are paired (matched by stem).
    """
    rows = []
    for a, b in itertools.combinations(entries, 2):
        da, db = a.dice_by_stem, b.dice_by_stem
        stems = sorted(set(da) & set(db))
        test = paired_wilcoxon([da[s] for s in stems], [db[s] for s in stems])
        rows.append({"a": a.label, "b": b.label, **test})
    # Holm's step-down correction keeps the family-wise error at ALPHA over all pairs.
    order = sorted(range(len(rows)), key=lambda i: _nan_last(rows[i]["p_value"]))
    running = 0.0
    for rank, i in enumerate(order):
        p = rows[i]["p_value"]
        adjusted = min(1.0, (len(rows) - rank) * p) if not math.isnan(p) else math.nan
        running = max(running, adjusted) if not math.isnan(adjusted) else running
        rows[i]["p_holm"] = running if not math.isnan(adjusted) else math.nan
        rows[i]["significant"] = bool(not math.isnan(adjusted) and running < ALPHA)
    return rows


def _nan_last(p: float) -> float:
    return math.inf if math.isnan(p) else p


def verdict(entries: list[Entry], tests: list[dict[str, Any]]) -> str:
    """A plain sentence saying which differences in Dice are significant."""
    if len(entries) < 2:
        return "Only one model was evaluated, so there is nothing to compare."
    best = max(entries, key=lambda e: e.metrics["dice_mean"])
    significant = [t for t in tests if t["significant"]]
    parts = [f"{best.label} has the highest mean Dice ({best.metrics['dice_mean']:.4f})."]
    if not significant:
        parts.append(
            f"No difference in per-image Dice between the models is significant at "
            f"α = {ALPHA} (Wilcoxon signed-rank, Holm-adjusted), so the data do not show that "
            "any model is better than another."
        )
        return " ".join(parts)
    for t in significant:
        higher, lower = (t["a"], t["b"]) if t["median_difference"] > 0 else (t["b"], t["a"])
        parts.append(
            f"{higher} scores higher than {lower} (median per-image Dice difference "
            f"{abs(t['median_difference']):.4f}, p = {t['p_holm']:.3g} after Holm adjustment)."
        )
    others = [t for t in tests if not t["significant"]]
    if others:
        pairs = ", ".join(f"{t['a']} vs {t['b']}" for t in others)
        parts.append(f"The other differences ({pairs}) are not significant at α = {ALPHA}.")
    return " ".join(parts)


def curves_png(entries: list[Entry]) -> bytes:
    """Loss, pixel accuracy and validation Dice per epoch for every model, as a PNG."""
    return png_bytes(comparison_curves([(e.label, e.history) for e in entries]), dpi=FIGURE_DPI)


def worst_images(entries: list[Entry]) -> dict[str, str]:
    """``{label: stem}`` of each model's lowest-Dice image (NaN Dice is never the worst)."""
    worst = {}
    for e in entries:
        scores = {s: d for s, d in e.dice_by_stem.items() if not math.isnan(d)}
        if scores:
            worst[e.label] = min(scores, key=scores.get)
    return worst


def samples_png(entries: list[Entry], n_random: int = 3, seed: int = 0) -> tuple[bytes, list[str]]:
    """A grid of evaluated images: the input, the ground truth, each model's mask as an overlay.

    Rows: a few random images scored by every model plus each model's worst image (by Dice).
    The image shown is the X-ray as stored (resized to the scoring size) when its file is still
    on this machine, else the preprocessed image the model saw; ground truth comes from the
    prepared cache the evaluation used, masks from each ``masks/`` folder.
    """
    import cv2

    from lungseg.data.cache import load_cache

    data = load_cache(_eval_cache(entries[0]))
    index = {stem: i for i, stem in enumerate(data.stems)}
    common = sorted(set.intersection(*(set(e.dice_by_stem) for e in entries)))
    rng = np.random.default_rng(seed)
    picks = [str(s) for s in rng.choice(common, size=min(n_random, len(common)), replace=False)]
    worst_of: dict[str, list[str]] = {}
    for label, stem in worst_images(entries).items():
        worst_of.setdefault(stem, []).append(label)
        if stem not in picks:
            picks.append(stem)
    rows = []
    for stem in picks:
        image, original = _shown_image(data, index[stem])
        truth = np.asarray(data.masks[index[stem]]).astype(bool)
        panels = [("X-ray" if original else "input (preprocessed)", None), ("ground truth", truth)]
        for e in entries:
            mask_file = e.eval_dir / "masks" / f"{stem}.png"
            mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
            if mask is not None and mask.shape != truth.shape:  # a model scored at another size
                mask = cv2.resize(mask, truth.shape[::-1], interpolation=cv2.INTER_LINEAR)
            mask = mask > 127 if mask is not None else np.zeros_like(truth)
            panels.append((f"{e.label}\nDice {e.dice_by_stem[stem]:.3f}", mask))
        label = stem if len(stem) <= 24 else stem[:22] + "…"
        if stem in worst_of:
            label += "\nworst of " + ", ".join(worst_of[stem])
        rows.append((label, image, truth, panels))
    return png_bytes(sample_grid(rows), dpi=FIGURE_DPI), picks


def _shown_image(data, i: int) -> tuple[np.ndarray, bool]:
    """``(image, is_original)``: the stored X-ray resized to the cache's size, when its file is
    on this machine; otherwise the preprocessed image from the cache."""
    import cv2

    from lungseg.data.io import decode_image

    key = data.rows[i].get("image_key")
    if key and data.source and "://" not in data.source:
        path = Path(data.source) / key
        try:
            pixels = decode_image(path.read_bytes(), str(path)).pixels
        except (OSError, LungsegError):
            pass
        else:
            size = (data.size, data.size)
            return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), True
    return np.asarray(data.images[i]), False


def _eval_cache(entry: Entry) -> Path:
    """The prepared data an evaluation scored against (the one at its scoring size)."""
    from lungseg.data.cache import is_cache

    scored = entry.metrics.get("scored_cache")
    if scored and is_cache(scored):
        return Path(scored)
    raise LungsegError(
        "the prepared data this evaluation scored against is gone; evaluate again", entry.eval_dir
    )


def software_versions() -> dict[str, str]:
    """Versions of lungseg and the libraries that shape the numbers."""
    import cv2
    import torch

    from lungseg._version import __version__

    return {
        "lungseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
    }


def _fmt_p(p: Any) -> str:
    """A p-value: 4 decimals, or scientific notation below 0.0001 (never a bare 0.0000)."""
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def comparison_table(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table."""
    header = ["model", "convention", "parameters", "mDice", "95% CI", "mIoU", "MSE", "HD95 (px)",
              "worst Dice", "pooled Dice", "train time", "inference ms/image"]  # fmt: skip
    rows = []
    for e in entries:
        m, s = e.metrics, e.summary
        low, high = m.get("dice_ci95") or [math.nan, math.nan]
        params = s.get("parameters") or s.get("params")
        seconds = s.get("train_seconds")
        rows.append([
            e.label,
            m.get("convention") or "unknown",
            f"{params / 1e6:.2f} M" if params else "–",
            _fmt(m.get("dice_mean")),
            f"{_fmt(low)}–{_fmt(high)}",
            _fmt(m.get("iou_mean")),
            _fmt(m.get("mse_mean"), 5),
            _fmt(m.get("hd95_mean"), 2),
            _fmt(m.get("dice_worst")),
            _fmt(m.get("dice_pooled")),
            _duration(seconds),
            _fmt(m.get("inference_ms_per_image"), 2),
        ])  # fmt: skip
    return header, rows


def _settings(entries: list[Entry]) -> list[tuple[str, str]]:
    from lungseg.data.cache import load_cache

    first = entries[0].metrics
    items = []
    try:
        data = load_cache(_eval_cache(entries[0]))
        counts = {s: len(data.indices(s)) for s in ("train", "val", "test")}
        import yaml

        manifest = yaml.safe_load((data.path / "prepare.yaml").read_text())
        grouped = "grouped by patient" if manifest.get("grouped_by_patient") else "per image"
        items += [
            ("dataset", f"{data.source} — {len(data.rows)} images"),
            ("split", f"train {counts['train']}, val {counts['val']}, test {counts['test']} "
                      f"({grouped}, seed {data.config.seed})"),
        ]  # fmt: skip
    except LungsegError:
        items.append(("dataset", str(first.get("data"))))
    items.append(("evaluated on", evaluated_on(entries)))
    for e in entries:
        pre = e.metrics.get("preprocess", {})
        preset = from_dict(PreprocessConfig, pre, "metrics.json:preprocess").preset if pre else None
        steps = ", ".join(k for k in ("blur", "gradient", "clahe", "normalize") if pre.get(k))
        post = e.metrics.get("postprocess")
        items.append((
            f"{e.label}",
            f"preprocessing {preset} ({steps or 'none'}, size {pre.get('size')}); "
            f"postprocessing {post}; best epoch {e.summary.get('best_epoch', '–')} of "
            f"{e.summary.get('epochs', '–')}",
        ))  # fmt: skip
    return items


def build_report(entries: list[Entry], out: str | Path, title: str = "lungseg comparison") -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/`` into ``out``; returns the HTML path."""
    if not entries:
        raise LungsegError("no evaluated models to report on")
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    tests = paired_tests(entries)
    sentence = verdict(entries, tests)
    header, rows = comparison_table(entries)
    curves = curves_png(entries)
    samples, _ = samples_png(entries)
    caption = samples_caption(entries)
    atomic_write_bytes(figures / "curves.png", curves)
    atomic_write_bytes(figures / "samples.png", samples)
    page = {
        "title": title,
        "evaluated_on": evaluated_on(entries),
        "results": {"header": header, "rows": rows},
        "verdict": sentence,
        "tests": _tests_table(tests),
        "caption": caption,
        "settings": _settings(entries),
        "versions": software_versions(),
    }
    atomic_write_text(out / "report.md", render("report.md.j2", **page))
    images = {"curves": _base64(curves), "samples": _base64(samples)}
    atomic_write_text(out / "report.html", render("report.html.j2", images=images, **page))
    summary = {
        "models": [e.label for e in entries],
        "table": [dict(zip(header, r, strict=True)) for r in rows],
        "paired_tests": tests,
        "verdict": sentence,
    }
    atomic_write_text(out / "comparison.json", json.dumps(summary, indent=2, default=str) + "\n")
    return out / "report.html"


def evaluated_on(entries: list[Entry]) -> str:
    """What the evaluations scored, from their ``metrics.json``: ``the test split (36 images)``,
    ``all 12 images (every split)``, or several such joined by "and" when they differ."""
    phrases: list[str] = []
    for e in entries:
        split, n = e.metrics["split"], e.metrics["n_images"]
        phrase = (
            f"all {n} images (every split)" if split == "all" else f"the {split} split ({n} images)"
        )
        if phrase not in phrases:
            phrases.append(phrase)
    return " and ".join(phrases)


def samples_caption(entries: list[Entry]) -> str:
    """The sample grid's caption: what the rows are and what each colour means."""
    worst = "; ".join(f"{label}: {stem}" for label, stem in worst_images(entries).items())
    splits = {e.metrics["split"] for e in entries}
    (split,) = splits if len(splits) == 1 else {"mixed"}
    kind = {"all": "image", "mixed": "evaluated image"}.get(split, f"{split} image")
    return (
        f"Random {kind}s, then each model's worst {kind} by Dice ({worst}). "
        f"Filled {MASK_COLOUR_NAME}: the mask of the column (ground truth or the model's); "
        f"{TRUTH_COLOUR_NAME} line: ground-truth outline. The X-ray is shown as stored, "
        "resized to the scoring size (the preprocessed input when the file is not on this "
        "machine)."
    )


def _base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _tests_table(tests: list[dict[str, Any]]) -> dict[str, list]:
    """Header and rows of the paired tests' table."""
    header = ["model A", "model B", "n", "median ΔDice (A−B)", "p (Wilcoxon)", "p (Holm)",
              "significant"]  # fmt: skip
    rows = [[t["a"], t["b"], str(t["n"]), _fmt(t["median_difference"]), _fmt_p(t["p_value"]),
             _fmt_p(t["p_holm"]), "yes" if t["significant"] else "no"] for t in tests]  # fmt: skip
    return {"header": header, "rows": rows}
