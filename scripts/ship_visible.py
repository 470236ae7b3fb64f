"""The visible-lung-field model (``unet-visible``) and every shipped model's per-source figures.

The anatomical models come from ``scripts/train_shipped.py`` (``covid-cxr``); this script
adds the model of the other mask convention, trained on ``shenzhen/`` + ``covid19-radiography-vp/``,
and scores every shipped model on each development source::

    python scripts/ship_visible.py data --shared ../shared/data --out work/visible-data
    lungseg train --config configs/unet-visible.yaml --data work/visible-data \\
        --out work/runs/unet-visible
    python scripts/ship_visible.py ship --run work/runs/unet-visible
    python scripts/ship_visible.py sources --shared ../shared/data \\
        --visible-data work/visible-data --work work

``suspects`` lists the Shenzhen masks drawn by the other rule (the heart inside the left lung):
the images on which a model of the visible convention has low recall at high precision, to be
looked at before they go into the recipe's ``train.exclude``::

    python scripts/ship_visible.py suspects --model unet-visible --visible-data work/visible-data \
        --work work

``shifts`` scores the visible models on the validation films as other hospitals' equipment
would deliver them (:data:`SHIFTS`: a portrait or landscape detector, a soft digitised film, a
vendor's edge enhancement, flat exposure, noise) and adds a robustness table to the card::

    python scripts/ship_visible.py shifts --visible-data work/visible-data --work work

``data`` links both sources' class folders into one dataset folder (the split is per class, so
per source, and by patient). ``ship`` stores the best epoch's weights in fp16 with the run's
history, the ``clean`` postprocessing, the ``visible`` convention and a review threshold
calibrated on the validation split (:func:`lungseg.inference.quality.calibrate_review_threshold`).
``sources`` evaluates each shipped model on the development sources (``covid-cxr`` test split,
the ``shenzhen`` and ``covid19-radiography-vp`` validation splits) and writes
``docs/sources.json`` and the per-source section of ``src/lungseg/weights/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from train_shipped import SOURCES_JSON, shipped_checkpoint, write_card

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "src" / "lungseg" / "weights"
RECIPE = REPO / "configs" / "unet-visible.yaml"
#: The visible-convention sources and their class folders.
VISIBLE_SOURCES = {
    "shenzhen": ("Normal", "Tuberculosis"),
    "covid19-radiography-vp": ("Viral Pneumonia",),
}


#: Shenzhen validation masks drawn by the other rule (found by ``suspects`` with the first
#: unet-visible, each looked at: the patient's left lung runs over the heart to the spine, or on
#: below the diaphragm). They stay in the validation figures; the card also gives the figures
#: without them (source ``shenzhen-visible-rule``).
OTHER_RULE_VAL = (
    "CHNCXR_0001_0", "CHNCXR_0007_0", "CHNCXR_0031_0", "CHNCXR_0043_0", "CHNCXR_0289_0",
    "CHNCXR_0423_1", "CHNCXR_0635_1",
)  # fmt: skip
#: The validation figures of shenzhen without :data:`OTHER_RULE_VAL`.
CLEAN_SOURCE = "shenzhen-visible-rule"


def prepared_visible(args: argparse.Namespace):
    """The visible sources prepared with the recipe's settings (into ``--work``)."""
    from lungseg.data.cache import prepare
    from lungseg.data.settings import prepare_settings

    return prepare(
        args.visible_data, Path(args.work) / "cache-visible", prepare_settings(RECIPE),
        progress=False,
    )  # fmt: skip


def cmd_suspects(args: argparse.Namespace) -> None:
    """Shenzhen images (every split) whose mask is much larger than ``--model``'s prediction
    while the prediction lies inside it: recall < ``--recall`` at precision > ``--precision``."""
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model

    ev = evaluate(load_model(args.model, device="cpu"), None, data=prepared_visible(args).path,
                  split="all")  # fmt: skip
    found = []
    for i, r in zip(ev.indices, ev.per_image, strict=True):
        row = ev.data.rows[i]
        if source_of(row["image_key"]) != "shenzhen":
            continue
        if r["recall"] < args.recall and r["precision"] > args.precision:
            found.append((row["split"], r["dice"], row["stem"], r["recall"], r["precision"]))
    for split, dice, stem, recall, precision in sorted(found):
        print(f"{split}\t{stem}\tDice {dice:.3f}\trecall {recall:.3f}\tprecision {precision:.3f}")
    print(f"{len(found)} suspects; look at each before it goes into train.exclude")


def _pad(image, mask, rows: float, cols: float):
    """Pad ``rows`` / ``cols`` (fractions of the height / width), split over both sides: the
    image by repeating its edge (a detector's larger field), the mask, at its own size, with
    background."""
    import cv2

    def pad(array, border: int):
        r, c = round(array.shape[0] * rows), round(array.shape[1] * cols)
        sides = (r // 2, r - r // 2, c // 2, c - c // 2)
        return cv2.copyMakeBorder(array, *sides, border, value=0)

    return pad(image, cv2.BORDER_REPLICATE), pad(mask, cv2.BORDER_CONSTANT)


def _unsharp(image, amount: float, sigma: float = 2.0):
    import cv2
    import numpy as np

    soft = cv2.GaussianBlur(image, (0, 0), sigma).astype(np.float32)
    return np.clip(image + amount * (image - soft), 0, 255).astype(np.uint8)


def _affine_intensity(image, scale: float, noise: float = 0.0):
    import numpy as np

    out = 128 + (image.astype(np.float32) - 128) * scale
    out += np.random.default_rng(0).normal(0, noise, image.shape) if noise else 0
    return np.clip(out, 0, 255).astype(np.uint8)


#: Other equipment simulated on a film (``uint8[H, W]`` image and mask at their own sizes, as
#: files): a portrait detector (4020x4892, as Montgomery's) or a landscape one, whose films
#: lungseg squashes to a square; a soft digitised film; a vendor's strong edge enhancement;
#: flat exposure (contrast 0.6); quantum noise (sd 8 of 255).
SHIFTS = {
    "portrait": lambda im, m: _pad(im, m, 4892 / 4020 - 1, 0),
    "landscape": lambda im, m: _pad(im, m, 0, 4892 / 4020 - 1),
    "soft": lambda im, m: (_unsharp(im, -1.0), m),
    "sharp": lambda im, m: (_unsharp(im, 1.5), m),
    "flat": lambda im, m: (_affine_intensity(im, 0.6), m),
    "noise": lambda im, m: (_affine_intensity(im, 1.0, 8.0), m),
}


def shifted_sets(args: argparse.Namespace) -> dict[str, Path]:
    """The validation films of the visible sources under each of :data:`SHIFTS`, written as
    dataset folders into ``--work/shifted/<shift>`` (kept: a second call reuses them)."""
    import cv2

    visible = prepared_visible(args)
    rows = [visible.rows[i] for i in visible.indices("val")]
    sets = {}
    for name, shift in SHIFTS.items():
        root = Path(args.work) / "shifted" / name
        sets[name] = root
        if (root / "done").is_file():
            continue
        for row in rows:
            image, mask = (
                cv2.imread(str(Path(args.visible_data) / row[key]), cv2.IMREAD_GRAYSCALE)
                for key in ("image_key", "mask_key")
            )
            # Each at its own size (the database's masks are smaller than its images): a mask
            # resampled to the image's size and back would move the outlines by a pixel.
            image, mask = shift(image, mask)
            for key, array in ((row["image_key"], image), (row["mask_key"], mask)):
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / key), array)
        (root / "done").write_text(f"{len(rows)} films\n")
    return sets


def cmd_shifts(args: argparse.Namespace) -> None:
    """Score ``--models`` on the shifted validation films; add the figures to sources.json."""
    import numpy as np

    from lungseg.data.settings import PrepareConfig
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model

    results = json.loads(SOURCES_JSON.read_text())
    sets = {"none": prepared_visible(args).path, **shifted_sets(args)}
    everything = PrepareConfig(val_fraction=0.0, test_fraction=0.0, convention="visible")
    for name in args.models:
        model = load_model(name, device="cpu")
        figures: dict[str, dict] = {}
        for shift, data in sets.items():
            ev = evaluate(
                model, None, data=data, split="val" if shift == "none" else "all",
                cache_root=Path(args.work) / "eval-cache", split_config=everything,
            )  # fmt: skip
            by_source: dict[str, list[float]] = {}
            for i, r in zip(ev.indices, ev.per_image, strict=True):
                by_source.setdefault(source_of(ev.data.rows[i]["image_key"]), []).append(r["dice"])
            figures[shift] = {
                source: {"dice_mean": float(np.mean(d)), "dice_worst": float(np.min(d))}
                for source, d in by_source.items()
            }
            print(f"{name} {shift}: " + ", ".join(
                f"{source} {f['dice_mean']:.4f} (worst {f['dice_worst']:.3f})"
                for source, f in figures[shift].items()
            ), flush=True)  # fmt: skip
        results.setdefault(name, {})["shifts"] = figures
    SOURCES_JSON.write_text(json.dumps(results, indent=2) + "\n")
    write_card()


def cmd_data(args: argparse.Namespace) -> None:
    """Link every image and mask of the visible sources into ``--out/<source>/<class>/``."""
    shared, out = Path(args.shared), Path(args.out)
    for source, classes in VISIBLE_SOURCES.items():
        for cls in classes:
            for kind in ("images", "masks"):
                folder = out / source / cls / kind
                folder.mkdir(parents=True, exist_ok=True)
                for file in sorted((shared / source / cls / kind).iterdir()):
                    link = folder / file.name
                    if not link.is_symlink():
                        os.symlink(file.resolve(), link)
    print(f"linked {', '.join(VISIBLE_SOURCES)} into {out}")


def cmd_ship(args: argparse.Namespace) -> None:
    """``weights/unet-visible.pt`` from a finished run (see the module docstring)."""
    import numpy as np

    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.quality import calibrate_review_threshold
    from lungseg.inference.segmenter import load_model
    from lungseg.models.checkpoint import save_checkpoint

    run = Path(args.run)
    ckpt = shipped_checkpoint(run, "clean", "shenzhen/ + covid19-radiography-vp/ (visible-data)")
    ckpt["convention"] = "visible"
    out = Path(args.weights_dir) / f"{args.name}.pt"
    save_checkpoint(out, ckpt)
    # The threshold is the fp16 model's, on the run's validation split.
    cache = run_cache(run)
    val = evaluate(load_model(out, device="cpu"), None, data=cache, split="val")
    unsure = np.array([r["uncertain_fraction"] for r in val.per_image])
    dice = np.array([r["dice"] for r in val.per_image])
    ckpt["review_threshold"] = calibrate_review_threshold(unsure, dice)
    save_checkpoint(out, ckpt)
    print(
        f"{out}: validation Dice {val.metrics['dice_mean']:.4f} (fp16, clean), review "
        f"threshold {ckpt['review_threshold']}"
    )


def run_cache(run: Path) -> Path:
    from lungseg.models.checkpoint import load_checkpoint

    last = run / "last.pt" if (run / "last.pt").is_file() else run / "best.pt"
    return Path(load_checkpoint(last)["data"]["cache"])


def source_of(key: str) -> str:
    """The development source of an image key: its top folder."""
    return key.split("/", 1)[0]


def summarize_source(rows: list[dict], check: dict) -> dict:
    """Per-source figures from ``evaluate``'s per-image rows (one source's)."""
    import numpy as np

    from lungseg.evaluation.statistics import bootstrap_ci
    from lungseg.inference.quality import error_rank_correlation

    dice = np.array([r["dice"] for r in rows])
    flagged = np.array([bool(r["review"]) for r in rows])
    below = dice < 0.90
    worst = sorted(rows, key=lambda r: r["dice"])[:5]
    return {
        "n_images": len(rows),
        "dice_mean": float(dice.mean()),
        "dice_ci95": bootstrap_ci(dice),
        "dice_worst": float(dice.min()),
        "below_090": float(below.mean()),
        "below_080": float((dice < 0.80).mean()),
        "recall_mean": float(np.mean([r["recall"] for r in rows])),
        "precision_mean": float(np.mean([r["precision"] for r in rows])),
        "area_ratio_median": check["area_ratio_median"],
        "spearman": error_rank_correlation([r["uncertain_fraction"] for r in rows], dice),
        "flagged": float(flagged.mean()),
        "flagged_below_090": float(flagged[below].mean()) if below.any() else math.nan,
        "worst5": [{"stem": r["stem"], "dice": r["dice"], "review": r["review"]} for r in worst],
    }


def cmd_sources(args: argparse.Namespace) -> None:
    """Score each shipped model per development source; write sources.json and the card."""
    import numpy as np

    from lungseg.evaluation.conventions import convention_check
    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model

    work = Path(args.work)
    visible = prepared_visible(args)
    sets = {
        "covid-cxr": (Path(args.shared) / "covid-cxr", "test", "anatomical"),
        "visible": (visible.path, "val", "visible"),
    }
    results = json.loads(SOURCES_JSON.read_text()) if SOURCES_JSON.is_file() else {}
    for name in args.models:
        model = load_model(name, device="cpu")
        entry = {"convention": model.convention, "review_threshold": model.review_threshold}
        for data, split, convention in sets.values():
            ev = evaluate(model, None, data=data, split=split, cache_root=work / "eval-cache")
            keys = [ev.data.rows[i]["image_key"] for i in ev.indices]
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                source = "covid-cxr" if convention == "anatomical" else source_of(key)
                groups.setdefault(source, []).append(i)
                if source == "shenzhen" and ev.per_image[i]["stem"] not in OTHER_RULE_VAL:
                    groups.setdefault(CLEAN_SOURCE, []).append(i)
            pred = np.asarray(ev.probabilities) > 0.5
            target = np.asarray(ev.data.masks[ev.indices]).astype(bool)
            for source, idx in groups.items():
                check = convention_check(pred[idx], target[idx], model.convention, convention)
                figures = summarize_source([ev.per_image[i] for i in idx], check)
                entry[source] = {"split": split, "convention": convention, **figures}
                print(
                    f"{name} {source} ({split}, {len(idx)}): Dice {figures['dice_mean']:.4f} "
                    f"worst {figures['dice_worst']:.3f} <0.90 {figures['below_090']:.0%}",
                    flush=True,
                )
        if name in args.tta_models:
            entry["tta"] = tta_figures(name, sets["visible"][0], work)
        elif "tta" in results.get(name, {}):
            entry["tta"] = results[name]["tta"]
        if "shifts" in results.get(name, {}):  # written by `shifts`, from other inputs
            entry["shifts"] = results[name]["shifts"]
        results[name] = entry
    SOURCES_JSON.parent.mkdir(parents=True, exist_ok=True)
    SOURCES_JSON.write_text(json.dumps(results, indent=2) + "\n")
    write_card()


def tta_figures(name: str, data: Path, work: Path) -> dict:
    """Mean and worst Dice per visible source without and with ``--tta``, on the same images."""
    import numpy as np

    from lungseg.evaluation.evaluate import evaluate
    from lungseg.inference.segmenter import load_model

    figures: dict[str, dict] = {}
    for tta in (False, True):
        model = load_model(name, device="cpu", tta=tta)
        ev = evaluate(model, None, data=data, split="val", cache_root=work / "eval-cache")
        groups: dict[str, list[float]] = {}
        for i, index in enumerate(ev.indices):
            row = ev.per_image[i]
            source = source_of(ev.data.rows[index]["image_key"])
            groups.setdefault(source, []).append(row["dice"])
            if source == "shenzhen" and row["stem"] not in OTHER_RULE_VAL:
                groups.setdefault(CLEAN_SOURCE, []).append(row["dice"])
        for source, dice in groups.items():
            entry = figures.setdefault(source, {"n_images": len(dice)})
            entry["with" if tta else "without"] = {
                "dice_mean": float(np.mean(dice)), "dice_worst": float(np.min(dice))
            }  # fmt: skip
        print(f"{name} tta={tta}: " + ", ".join(
            f"{s} {float(np.mean(d)):.4f}" for s, d in groups.items()), flush=True)  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="link the visible sources into one dataset folder")
    data.add_argument("--shared", required=True)
    data.add_argument("--out", required=True)
    ship = sub.add_parser("ship", help="package a finished run as a shipped model")
    ship.add_argument("--run", required=True)
    ship.add_argument("--name", default="unet-visible")
    ship.add_argument("--weights-dir", default=str(WEIGHTS))
    sources = sub.add_parser("sources", help="per-source figures of the shipped models")
    sources.add_argument("--shared", required=True)
    sources.add_argument("--visible-data", required=True)
    sources.add_argument("--work", required=True)
    suspects = sub.add_parser("suspects", help="Shenzhen masks that may follow the other rule")
    suspects.add_argument("--model", default="unet-visible")
    suspects.add_argument("--visible-data", required=True)
    suspects.add_argument("--work", required=True)
    suspects.add_argument("--recall", type=float, default=0.88)
    suspects.add_argument("--precision", type=float, default=0.93)
    sources.add_argument(
        "--models", nargs="+", default=["unet", "fcn", "deeplabv3", "unet-fast", "unet-visible"]
    )
    sources.add_argument(
        "--tta-models", nargs="*", default=["unet-visible"],
        help="also score these with --tta on the visible sources (the anatomical models' TTA "
        "figures are in the card's TTA table)",
    )  # fmt: skip
    shifts = sub.add_parser("shifts", help="the visible models under other equipment, simulated")
    shifts.add_argument("--visible-data", required=True)
    shifts.add_argument("--work", required=True)
    shifts.add_argument("--models", nargs="+", default=["unet-visible"])
    args = parser.parse_args()
    commands = {
        "data": cmd_data, "ship": cmd_ship, "sources": cmd_sources, "suspects": cmd_suspects,
        "shifts": cmd_shifts,
    }  # fmt: skip
    commands[args.command](args)


if __name__ == "__main__":
    main()
