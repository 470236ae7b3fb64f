"""Train, select and package the models shipped inside lungseg (``src/lungseg/weights/``).

Reproduces the shipped weights from the project's development data::

    python scripts/train_shipped.py train unet  --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py train fcn   --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py train deeplabv3 --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py train unet-fast --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py package --work work/ --data ../shared/data/covid-cxr

``train`` prepares the data (patient-grouped split, seed 0) and trains one model with its recipe,
``configs/<model>.yaml`` (they can run in parallel: give each ``--threads 1`` on a small CPU).
``package`` chooses each new model's postprocessing preset on the **validation** split, stores
the weights in fp16 (checking that validation Dice does not change), evaluates every shipped
model, the ensemble and the int8 export of ``unet-fast`` on the **test** split, and writes
``src/lungseg/weights/<model>.pt``, ``src/lungseg/weights/MODEL_CARD.md`` and
``docs/comparison/``, and records its figures in ``docs/shipped_results.json``, from which
``card`` renders MODEL_CARD.md again after a change of its templates (no scoring).
``package --models NAME...`` replaces only those models' weights; the others are kept and scored
again. Nothing is tuned on the test split.

Runs trained on another machine (the GPU machine; ``scripts/gpu_session.sh`` does the whole
round trip) travel as ``pack --work W --out DIR MODEL...`` archives (no optimizer state) and are
unpacked here by ``adopt --work W --data SRC ARCHIVE...``, which prepares the data here and
checks that the split is the one the run was trained on; ``package`` then ships them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "lungseg" / "weights"

#: The recipes: one settings file per shipped model, read by ``lungseg train --config``; the
#: comments in each say what was chosen on validation and what did not help.
CONFIGS = REPO / "configs"
MODELS = ("unet", "fcn", "deeplabv3", "unet-fast")
#: The figures of the last ``package`` (test split, validation presets, TTA, int8), from which
#: ``card`` renders MODEL_CARD.md without scoring again.
RESULTS_JSON = REPO / "docs" / "shipped_results.json"
#: The per-source figures of every shipped model (``scripts/ship_visible.py sources``).
SOURCES_JSON = REPO / "docs" / "sources.json"


def recipe(model: str) -> Path:
    return CONFIGS / f"{model}.yaml"


def cache_dir(work: Path, preprocess) -> Path:
    """The cache of a preprocessing (a :class:`~lungseg.data.preprocessing.PreprocessConfig`)."""
    return work / f"cache-{preprocess.preset}-{preprocess.size}"


def cmd_train(args: argparse.Namespace) -> None:
    from lungseg.data.settings import prepare_settings

    config = recipe(args.model)
    pre = prepare_settings(config, preprocess=args.preprocess, size=args.size).preprocess
    work = Path(args.work)
    cache = cache_dir(work, pre)
    _prepare(args.data, cache, pre, config)
    run = work / "runs" / args.model
    command = [
        sys.executable, "-m", "lungseg", "train", "--config", str(config), "--data", str(cache),
        "--out", str(run),
    ]  # fmt: skip
    options = {"--epochs": args.epochs, "--n-filters": args.n_filters, "--threads": args.threads,
               "--device": args.device}  # fmt: skip
    for flag, value in options.items():
        if value:
            command += [flag, str(value)]
    if (run / "last.pt").is_file():
        command.append("--resume")
    if not (run / "summary.json").is_file():
        subprocess.run(command, check=True)


def _prepare(source: str, cache: Path, preprocess, config: Path | None = None) -> None:
    command = [sys.executable, "-m", "lungseg", "prepare", "--data", source, "--out", str(cache),
               "--size", str(preprocess.size), "--preprocess", preprocess.preset]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    subprocess.run(command, check=True)


def checkpoint_preprocess(ckpt: dict):
    """The :class:`~lungseg.data.preprocessing.PreprocessConfig` a checkpoint records."""
    from lungseg.core.config import from_dict
    from lungseg.data.preprocessing import PreprocessConfig

    return from_dict(PreprocessConfig, ckpt["preprocess"], "checkpoint:preprocess")


def shipped_checkpoint(run: Path, preset: str, source_note: str) -> dict:
    """The run's best checkpoint without training state, fp16 weights, chosen postprocessing."""
    import torch

    from lungseg.core.config import to_dict
    from lungseg.inference.postprocessing import PostprocessConfig
    from lungseg.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    # The best epoch's weights, with the whole run's history (best.pt stops at the best epoch;
    # a packed run's best.pt already holds it and has no last.pt).
    ckpt["history"] = load_checkpoint(record_checkpoint(run))["history"]
    for key in ("optimizer", "scheduler", "rng"):
        ckpt.pop(key, None)
    ckpt["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    ckpt["postprocess"] = to_dict(PostprocessConfig.preset(preset))
    ckpt["postprocess_preset"] = preset
    data = dict(ckpt.get("data") or {})
    data["cache"] = ""
    data["source"] = source_note
    ckpt["data"] = data
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())
    return ckpt


def cmd_package(args: argparse.Namespace) -> None:
    """Package the models trained in ``--work``; re-score the shipped ones kept as they are.

    A model listed in ``--models`` with a finished run in ``WORK/runs/<model>`` gets new weights
    (postprocessing chosen on validation). Every other shipped model keeps its weights and its
    recorded postprocessing, and is evaluated again on the same split, so MODEL_CARD.md always
    describes all shipped models with numbers from one code version.
    """
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import ensemble
    from lungseg.models.identity import file_digest
    from lungseg.models.shipped import ENSEMBLE_MODELS

    work = Path(args.work)
    weights = Path(args.weights_dir)
    weights.mkdir(parents=True, exist_ok=True)
    recorded = Path(args.results)
    before = json.loads(recorded.read_text()) if recorded.is_file() else {}
    results: dict[str, dict] = {}
    segmenters = {}
    for model in MODELS:
        run = work / "runs" / model
        if model in args.models and (run / "summary.json").is_file():
            shipped, data, results[model] = _package_run(model, run, work, weights)
        elif (weights / f"{model}.pt").is_file():
            shipped, data, results[model] = _rescore_shipped(model, work, weights, args.data)
            _carry_drift(results[model], before.get(model), weights / f"{model}.pt")
        else:
            print(f"{model}: no run in {run} and no shipped weights; left out")
            continue
        # Every model is scored at 256 against the same masks, whatever its working size.
        test = evaluate(shipped, work / "eval" / model / "test", data=data, split="test",
                        save_masks=True, size=SCORE_SIZE)  # fmt: skip
        results[model]["test"] = test.metrics
        results[model]["cache"] = str(data)
        results[model]["network"] = network_text(weights / f"{model}.pt")
        results[model]["weights_sha256"] = file_digest(weights / f"{model}.pt")
        segmenters[model] = shipped
    if all(name in segmenters for name in ENSEMBLE_MODELS):
        first = results[ENSEMBLE_MODELS[0]]
        ens_model = ensemble([segmenters[m] for m in ENSEMBLE_MODELS])
        ens = evaluate(ens_model,
                       work / "eval" / "ensemble" / "test", data=first["cache"], split="test",
                       save_masks=True, size=SCORE_SIZE)  # fmt: skip
        results["ensemble"] = {
            "test": ens.metrics,
            "postprocess": f"{first['postprocess']} (mean probability)",
            "cache": first["cache"],
        }
        segmenters["ensemble"] = ens_model
    for name, segmenter in segmenters.items():
        results[name]["tta"] = _tta_result(name, segmenter, results, work)
    for model in INT8_MODELS:
        if model in results:
            results[f"{model}-int8"] = _int8_result(model, results[model], work, weights)
    recorded.parent.mkdir(parents=True, exist_ok=True)
    places = {str(work.absolute()): "WORK", str(weights.absolute()): "WEIGHTS"}
    recorded.write_text(json.dumps(_portable(results, places), indent=2, default=str) + "\n")
    write_card(recorded, weights)
    if args.report:
        from lungseg.evaluation.report import build_report, load_checkpoint_entry

        n_test = next(iter(results.values()))["test"]["n_images"]
        title = (f"lungseg shipped models on the covid-cxr test split ({n_test} images of "
                 "patients never seen in training)")  # fmt: skip
        entries = [load_checkpoint_entry(work / "eval" / m / "test", m) for m in results]
        build_report(entries, args.report, title=title)
    print(json.dumps({m: r["test"]["dice_mean"] for m, r in results.items()}, indent=2))


def _package_run(model: str, run: Path, work: Path, weights: Path):
    """New shipped weights from a finished run: postprocessing chosen on validation, fp16."""
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model
    from lungseg.models.checkpoint import save_checkpoint

    val = evaluate(run, work / "eval" / model / "val", split="val", postprocess=["all"])
    presets = val.metrics["postprocess_presets"]
    best = max(presets, key=lambda name: presets[name]["dice_mean"])
    summary = json.loads((run / "summary.json").read_text())
    ckpt = shipped_checkpoint(run, best, SOURCE_NOTE)
    ckpt["summary"] = summary
    target = weights / f"{model}.pt"
    save_checkpoint(target, ckpt)
    data = run_cache(run)
    shipped = load_model(target, device="cpu")
    val16 = evaluate(shipped, work / "eval" / model / "val-fp16", data=data, split="val",
                     postprocess=[best])  # fmt: skip
    drift = abs(val16.metrics["dice_mean"] - presets[best]["dice_mean"])
    if not (run / "last.pt").is_file():
        drift = None  # a packed run's weights are fp16 already: there is no drift to measure
    result = {"postprocess": best, "val_presets": presets, "fp16_val_dice_drift": drift,
              "summary": summary, "new": True}  # fmt: skip
    return shipped, data, result


def _rescore_shipped(model: str, work: Path, weights: Path, source: str | None):
    """An already shipped model, unchanged: its validation scores per preset, its summary."""
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model
    from lungseg.models import count_parameters
    from lungseg.models.checkpoint import load_checkpoint, model_from_checkpoint

    path = weights / f"{model}.pt"
    ckpt = load_checkpoint(path)
    pre = checkpoint_preprocess(ckpt)
    data = cache_dir(work, pre)
    if not (data / "split.csv").is_file():
        if not source:
            raise SystemExit(f"{model}: give --data to prepare {data} for re-scoring {path}")
        _prepare(source, data, pre)
    shipped = load_model(path, device="cpu")
    val = evaluate(shipped, work / "eval" / model / "val", data=data, split="val",
                   postprocess=["all"])  # fmt: skip
    summary = ckpt.get("summary") or {
        "params": count_parameters(model_from_checkpoint(ckpt)),
        "best_epoch": ckpt.get("best_epoch"),
        "epochs": len(ckpt.get("history") or []),
        "n_train": ckpt["data"].get("n_train"),
        "n_val": ckpt["data"].get("n_val"),
        "preprocess": pre.preset,
    }
    presets = val.metrics["postprocess_presets"]
    drift = _fp16_drift(work / "runs" / model, ckpt, presets[ckpt["postprocess_preset"]], data)
    result = {"postprocess": ckpt["postprocess_preset"], "val_presets": presets,
              "fp16_val_dice_drift": drift, "summary": summary, "new": False}  # fmt: skip
    return shipped, data, result


def _portable(value, places: dict[str, str]):
    """``value`` with the machine's own folders in its paths replaced by names (``WORK``,
    ``WEIGHTS``): the recorded figures go into the repository."""
    if isinstance(value, dict):
        return {k: _portable(v, places) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v, places) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        for folder, name in places.items():
            if value.startswith(folder + "/") or value == folder:
                return name + value[len(folder) :]
    return value


def _carry_drift(result: dict, before: dict | None, weights: Path) -> None:
    """A kept model's fp16 drift, measured when it was packaged, stays in the card while its
    weights are the same file (the run it came from is rarely at hand later)."""
    if result.get("fp16_val_dice_drift") is not None or not before:
        return
    from lungseg.models.identity import file_digest

    if before.get("weights_sha256") == file_digest(weights):
        result["fp16_val_dice_drift"] = before.get("fp16_val_dice_drift")


def write_card(recorded: Path = RESULTS_JSON, weights: Path = WEIGHTS) -> Path:
    """MODEL_CARD.md from the recorded results of ``package`` and, at its end, the per-source
    figures of ``scripts/ship_visible.py sources``: no scoring, so a change of the templates
    reaches the card at once (tests/test_model_card.py checks that the shipped card is this)."""
    sources = json.loads(SOURCES_JSON.read_text()) if SOURCES_JSON.is_file() else None
    card = weights / "MODEL_CARD.md"
    card.write_text(model_card(json.loads(recorded.read_text()), sources))
    return card


def cmd_card(args: argparse.Namespace) -> None:
    recorded = Path(args.results)
    if not recorded.is_file():
        raise SystemExit(f"{recorded}: no recorded figures; run 'package' first")
    print(f"wrote {write_card(recorded, Path(args.weights_dir))}")


def _fp16_drift(run: Path, shipped: dict, shipped_val: dict, data: Path) -> float | None:
    """How much fp16 storage moved validation Dice, when the run the weights came from is at
    hand (its best weights, rounded to fp16, are exactly the shipped ones); else None."""
    import torch

    from lungseg.evaluation.evaluate import evaluate
    from lungseg.models.checkpoint import load_checkpoint

    if not (run / "best.pt").is_file():
        return None
    trained = load_checkpoint(run / "best.pt")["state_dict"]
    if any(v.dtype == torch.float16 for v in trained.values()):
        return None  # a packed run (from the GPU machine) travelled in fp16: nothing to compare
    weights = shipped["state_dict"]
    if trained.keys() != weights.keys() or not all(
        trained[k].half().equal(weights[k]) if weights[k].is_floating_point()
        else trained[k].equal(weights[k])
        for k in weights
    ):  # fmt: skip
        return None
    val = evaluate(run, None, data=data, split="val", postprocess=[shipped["postprocess_preset"]])
    return abs(val.metrics["dice_mean"] - shipped_val["dice_mean"])


def _tta_result(name: str, segmenter, results: dict, work: Path) -> dict:
    """Validation and test scores with test-time augmentation, reported beside the plain ones."""
    from lungseg.evaluation.evaluate import evaluate

    data = results[name]["cache"]
    scores = {}
    for split in ("val", "test"):
        scores[split] = evaluate(segmenter, work / "eval" / f"{name}-tta" / split, data=data,
                                 split=split, size=SCORE_SIZE, tta=True).metrics  # fmt: skip
    plain_val = results[name].get("val_presets", {}).get(results[name].get("postprocess"))
    if plain_val is None:  # the ensemble: no preset was chosen for it, score it plainly here
        plain_val = evaluate(segmenter, None, data=data, split="val", size=SCORE_SIZE).metrics
    return {"val": scores["val"], "test": scores["test"], "val_plain": plain_val["dice_mean"]}


#: Shipped models whose int8 ONNX export (``lungseg export --int8``) is scored for the card.
INT8_MODELS = ("unet-fast",)
#: Training images the int8 ranges are calibrated on (evenly spread over the training split).
INT8_CALIBRATION = 64


def _int8_result(model: str, fp32: dict, work: Path, weights: Path) -> dict:
    """Export ``model`` to int8 ONNX calibrated on training images; score it like the others."""
    from lungseg.data.cache import load_cache
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.export import evenly_spread, export_onnx

    data = load_cache(fp32["cache"])
    train = [Path(data.source) / data.rows[i]["image_key"] for i in data.indices("train")]
    calibration = evenly_spread(train, INT8_CALIBRATION)
    onnx = export_onnx(weights / f"{model}.pt", work / "int8" / f"{model}.onnx",
                       int8_calibration=calibration)  # fmt: skip
    val = evaluate(str(onnx), work / "eval" / f"{model}-int8" / "val", data=data.path,
                   split="val")  # fmt: skip
    test = evaluate(str(onnx), work / "eval" / f"{model}-int8" / "test", data=data.path,
                    split="test", save_masks=True, size=SCORE_SIZE)  # fmt: skip
    return {
        "postprocess": fp32["postprocess"],
        "test": test.metrics,
        "val_dice": val.metrics["dice_mean"],
        "val_dice_fp32": fp32["val_presets"][fp32["postprocess"]]["dice_mean"],
        "calibration_images": len(calibration),
        "summary": {"params": fp32["summary"].get("params")},
    }


#: Test scores of every shipped model are computed at this size (masks of models trained at
#: 128 are resized the way ``lungseg segment`` resizes them), so the card compares like with like.
SCORE_SIZE = 256
SOURCE_NOTE = "../shared/data/covid-cxr (355 pairs, 217 patients), split seed 0"


def network_text(path: Path) -> str:
    """``fcn (n_filters=16, depth=4, skips=True)``: the architecture and what differs from the
    study's network (its defaults), with the base width always shown."""
    from lungseg.models import model_info
    from lungseg.models.checkpoint import load_checkpoint

    spec = load_checkpoint(path)["model"]
    changed = model_info(spec["name"]).changed(spec["kwargs"])
    shown = [f"n_filters={spec['kwargs'].get('n_filters')}"] + [
        f"{k}={v}" for k, v in changed.items() if k != "n_filters"
    ]
    return f"{spec['name']} ({', '.join(shown)})"


#: The model card's template (``model_card.md.j2``) and the filters it formats numbers with.
TEMPLATES = Path(__file__).resolve().parent / "templates"


def _ci(metrics: dict, key: str = "dice") -> str:
    low, high = metrics[f"{key}_ci95"]
    return f"{metrics[f'{key}_mean']:.4f} ({low:.4f}–{high:.4f})"


def _minutes(seconds: float | None) -> str:
    return f"{seconds / 60:.0f} min" if seconds else "–"


def _having(results: dict, key: str) -> dict:
    return {name: r for name, r in results.items() if key in r}


def model_card(results: dict, sources: dict | None = None) -> str:
    """MODEL_CARD.md for the shipped weights, from the results of ``package``, and at its end
    the per-source figures of ``scripts/ship_visible.py sources`` when given."""
    from lungseg.core.render import render

    filters = {"ci": _ci, "minutes": _minutes, "having": _having}
    card = render("model_card.md.j2", TEMPLATES, filters=filters, results=results)
    if sources:
        card = card.rstrip("\n") + "\n\n" + sources_section(sources)
    return card


def sources_section(results: dict) -> str:
    """The per-source section at the end of MODEL_CARD.md (``templates/sources.md.j2``)."""
    import math

    from lungseg.core.render import render

    def ci(r: dict) -> str:
        low, high = r["dice_ci95"]
        return f"{r['dice_mean']:.4f} ({low:.4f}-{high:.4f})"

    def pct(value: float | None) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.0%}"

    return render("sources.md.j2", TEMPLATES, filters={"ci": ci, "pct": pct}, results=results)


#: Files of a run that ``pack`` keeps besides its best weights.
PACKED_FILES = ("summary.json", "history.csv", "config.yaml", "curves.png")


def record_checkpoint(run: Path) -> Path:
    """The checkpoint holding a run's whole history and data record: ``last.pt``, or the
    ``best.pt`` of a packed run (which has no ``last.pt``)."""
    return run / "last.pt" if (run / "last.pt").is_file() else run / "best.pt"


def pack_run(run: Path, into: Path) -> Path:
    """A run (finished or stopped) as ``into/<name>/``, small enough to travel: ``best.pt``
    with fp16 weights (what shipping stores), no optimizer state and the whole run's history,
    and the run's records. Four shipped-size runs fit one 16 MiB archive."""
    from lungseg.models.checkpoint import load_checkpoint, save_checkpoint

    staging = into / run.name
    staging.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(run / "best.pt")
    for key in ("optimizer", "scheduler", "rng"):
        ckpt.pop(key, None)
    ckpt["history"] = load_checkpoint(record_checkpoint(run))["history"]
    ckpt["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    save_checkpoint(staging / "best.pt", ckpt)
    for name in PACKED_FILES:
        if (run / name).is_file():
            (staging / name).write_bytes((run / name).read_bytes())
    return staging


def cmd_pack(args: argparse.Namespace) -> None:
    """Runs trained on another machine (the GPU one), each packed (:func:`pack_run`) into the
    folder ``--out``, for ``adopt`` (``scripts/gpu_session.sh`` archives that folder)."""
    out = Path(args.out)
    for model in args.models:
        run = Path(args.work) / "runs" / model
        if not (run / "best.pt").is_file():
            print(f"{model}: no run with a finished epoch in {run}; not packed")
            continue
        note = "" if (run / "summary.json").is_file() else " (stopped before its last epoch)"
        print(f"{model}: packed into {pack_run(run, out)}{note}")


def cmd_adopt(args: argparse.Namespace) -> None:
    """Unpack archives of packed runs into ``WORK/runs`` and point them at this machine's data.

    The data is prepared here with each run's recorded preprocessing and size (same split seed);
    the split must be the one the run was trained on (checked by its digest), so ``package``
    evaluates on exactly the run's validation and test images.
    """
    import tarfile

    import yaml

    from lungseg.data.cache import load_cache
    from lungseg.models.checkpoint import load_checkpoint, save_checkpoint
    from lungseg.training.data import split_digest

    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    for archive in args.archives:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("runs/")]
            names = {Path(m.name).parts[1] for m in members}
            tar.extractall(work, members=members, filter="data")
        for model in sorted(names):
            run = work / "runs" / model
            last = load_checkpoint(record_checkpoint(run))
            pre = checkpoint_preprocess(last)
            cache = cache_dir(work, pre).absolute()
            _prepare(args.data, cache, pre)
            data = load_cache(cache)
            digest = split_digest(data.stems, data.indices("train"), data.indices("val"))
            if digest != last["data"]["split"]:
                raise SystemExit(f"{run}: trained on another split than {cache} holds")
            for name in ("best.pt", "last.pt"):
                if not (run / name).is_file():
                    continue
                ckpt = load_checkpoint(run / name)
                ckpt["data"]["cache"] = str(cache)
                save_checkpoint(run / name, ckpt)
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["cache"] = str(cache)
            (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            print(f"{model}: adopted into {run} (data {cache})")


def run_cache(run: Path) -> Path:
    from lungseg.models.checkpoint import load_checkpoint

    return Path(load_checkpoint(record_checkpoint(run))["data"]["cache"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("model", choices=MODELS)
    train.add_argument("--data", required=True)
    train.add_argument("--work", required=True)
    train.add_argument("--epochs", type=int)
    train.add_argument("--size", type=int)
    train.add_argument("--preprocess")
    train.add_argument("--threads", type=int)
    train.add_argument("--n-filters", type=int)
    train.add_argument("--device")
    package = sub.add_parser("package")
    package.add_argument("--work", required=True)
    package.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        help="models whose runs in WORK/runs replace the shipped weights",
    )
    package.add_argument("--data", help="dataset to prepare for re-scoring kept shipped models")
    package.add_argument(
        "--report",
        default=str(REPO / "docs" / "comparison"),
        help="folder for the shipped models' comparison report ('' for none)",
    )
    package.add_argument("--weights-dir", default=str(WEIGHTS))
    package.add_argument("--results", default=str(RESULTS_JSON), help="where the figures go")
    card = sub.add_parser("card", help="render MODEL_CARD.md from the recorded figures")
    card.add_argument("--results", default=str(RESULTS_JSON))
    card.add_argument("--weights-dir", default=str(WEIGHTS))
    pack = sub.add_parser("pack", help="pack runs (fp16 best weights, no optimizer) for adopt")
    pack.add_argument("--work", required=True)
    pack.add_argument("--out", required=True)
    pack.add_argument("models", nargs="+")
    adopt = sub.add_parser("adopt", help="unpack archives of packed runs, prepare the data")
    adopt.add_argument("--work", required=True)
    adopt.add_argument("--data", required=True)
    adopt.add_argument("archives", nargs="+")
    args = parser.parse_args()
    commands = {"train": cmd_train, "package": cmd_package, "card": cmd_card, "pack": cmd_pack,
                "adopt": cmd_adopt}  # fmt: skip
    commands[args.command](args)


if __name__ == "__main__":
    main()
