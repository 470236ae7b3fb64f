"""``lungseg compare``: prepare once, train each model, evaluate each on the same test split,
and write the comparison report.

Ablations use the same machinery: several preprocessing presets give one prepared cache and one
run per (model, preset); several postprocessing presets give one evaluation (and table row) per
run and preset. Finished runs are reused, so an interrupted comparison continues where it stopped
(a half-finished run resumes from its ``last.pt``).

Layout of ``OUT``::

    <data>-<size>-<preprocess>-<hash>/  prepared data, one per preprocessing (cache_name)
    runs/<model>-<preprocess>/          run directories (best.pt, history.csv, ...)
    runs/<model>-<preprocess>/eval-<postprocess>/   metrics.json, per_image.csv, masks/
    report.md, report.html, figures/, comparison.json
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lungseg.core.errors import LungsegError
from lungseg.data.cache import cache_name
from lungseg.data.cache import prepare as prepare_data
from lungseg.data.settings import PrepareConfig
from lungseg.evaluation.evaluate import evaluate
from lungseg.evaluation.report import Entry, build_report, load_checkpoint_entry, load_entry
from lungseg.models.shipped import STUDY_MODELS


def _label(model: str, pre: str, post: str, many_pre: bool, many_post: bool) -> str:
    parts = [model]
    if many_pre:
        parts.append(f"pre={pre}")
    if many_post:
        parts.append(f"post={post}")
    return " · ".join(parts)


def compare(
    data: str | Path,
    out: str | Path,
    train_config,
    models: Sequence[str] | None = None,
    preprocess: Sequence[str] | None = None,
    postprocess: Sequence[str] | None = None,
    prepare: PrepareConfig | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> Path:
    """Run the whole comparison and return the path of ``report.html``.

    Args:
        data: dataset folder or ``az://`` URL.
        out: output folder (see the module docstring).
        train_config: a :class:`~lungseg.training.TrainConfig` with the shared training settings;
            its ``model`` is set per run.
        models: registered model names (default: the study's three).
        preprocess: preprocessing presets, one cache each: each switches the steps of
            ``prepare``'s preprocessing, whose parameters stay (default: ``prepare``'s
            preprocessing as it is, named by its preset or ``custom``).
        postprocess: postprocessing presets, one evaluation each (default: ``train_config``'s).
        prepare: working size and split settings (default: lungseg's); with ``preprocess``,
            each preset replaces its preprocessing.
        progress: show progress bars.
        skip_bad: leave the dataset's bad files out (listed in each cache's ``skipped.csv``).
    """
    from lungseg.models import list_models
    from lungseg.training import train

    models = list(STUDY_MODELS if models is None else models)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise LungsegError(
            f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(list_models())}"
        )
    if not models:
        raise LungsegError("--models is empty; name at least one model")
    out = Path(out)
    prepare = prepare or PrepareConfig()
    presets = list(preprocess or [prepare.preprocess.preset])
    posts = list(postprocess or [train_config.postprocess])
    entries: list[Entry] = []
    for pre in presets:
        settings = prepare
        if preprocess:
            settings = replace(prepare, preprocess=prepare.preprocess.with_preset(pre))
        prepared = prepare_data(
            data, out / cache_name(data, settings), settings, workers=train_config.workers,
            skip_bad=skip_bad, progress=progress,
        )  # fmt: skip
        for model in models:
            run_dir = out / "runs" / f"{model}-{pre}"
            config = replace(train_config, model=model)
            if not _finished(run_dir, config.epochs):
                resume = (run_dir / "last.pt").is_file()
                train(config, prepared, run_dir, resume=resume, progress=progress)
            for post in posts:
                eval_dir = run_dir / f"eval-{post}"
                evaluate(run_dir, eval_dir, split="test", postprocess=[post], save_masks=True,
                         device=config.device)  # fmt: skip
                label = _label(model, pre, post, len(presets) > 1, len(posts) > 1)
                entries.append(load_entry(run_dir, eval_dir, label))
    return build_report(entries, out)


def _finished(run_dir: Path, epochs: int) -> bool:
    import json

    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    return json.loads(summary.read_text()).get("epochs", 0) >= epochs


def report_from_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Rebuild the report from existing run directories, without training.

    Each run's ``eval-*`` folders become table rows; a run without any is evaluated on its test
    split first (into ``eval-recorded``).
    """
    if not run_dirs:
        raise LungsegError("--from-runs needs at least one run directory")
    entries = []
    for run in map(Path, run_dirs):
        if not (run / "best.pt").is_file():
            raise LungsegError("not a run directory (no best.pt)", run)
        evals = sorted(p.parent for p in run.glob("eval-*/metrics.json"))
        if not evals:
            evaluate(run, run / "eval-recorded", split="test", save_masks=True)
            evals = [run / "eval-recorded"]
        for eval_dir in evals:
            suffix = eval_dir.name.removeprefix("eval-")
            label = run.name if len(evals) == 1 else f"{run.name} · post={suffix}"
            entries.append(load_entry(run, eval_dir, label))
    return build_report(entries, out)


def compare_shipped(
    data: str | Path,
    out: str | Path,
    models: Sequence[str] = STUDY_MODELS,
    split: str = "all",
    segment: bool = True,
    device: str = "auto",
    progress: bool = True,
    title: str | None = None,
    skip_bad: bool = False,
) -> Path:
    """Evaluate the models shipped with lungseg (or any checkpoints) on ``data`` and report.

    The main job on the bundled ``examples/``: each model segments the images (masks at the
    original resolution, overlays and measurements in ``OUT/<model>/``), is scored against the
    masks, and the comparison report is written, without training anything. Models with
    different working sizes are scored at the largest of them (see :func:`evaluate`'s ``size``).
    """
    from lungseg.inference.segmenter import load_model
    from lungseg.segment import find_images, segment_files

    out = Path(out)
    entries = []
    segmenters = [load_model(name, device=device) for name in models]
    sizes = {segmenter.size for segmenter in segmenters}
    # Models trained at different sizes are all scored at the largest, against the same masks.
    score_size = max(sizes) if len(sizes) > 1 else None
    for name, segmenter in zip(models, segmenters, strict=True):
        path = Path(name)
        if path.suffix in (".pt", ".onnx"):  # runs/unet/best.pt -> unet, weights/fcn.pt -> fcn
            label = path.parent.name if path.stem in ("best", "last") else path.stem
        else:
            label = path.name
        eval_dir = out / "eval" / label
        result = evaluate(
            segmenter, eval_dir, data=data, split=split, save_masks=True, size=score_size,
            skip_bad=skip_bad,
        )  # fmt: skip
        if segment:
            images = [
                result.data.source.rstrip("/") + "/" + result.data.rows[i]["image_key"]
                for i in result.indices
            ]
            files = [p for p in images if Path(p).is_file()]
            if files:
                segment_files(
                    segmenter, find_images(files), out / label, overlays=True, overwrite=True,
                    shard="0/1", progress=progress,  # all of it here, whatever the scheduler says
                )  # fmt: skip
        entries.append(load_checkpoint_entry(eval_dir, label))
    return build_report(entries, out, title=title or f"lungseg models on {data}")
