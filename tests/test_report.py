"""The comparison report: paired tests with Holm's correction, the verdict sentence, and
``lungseg compare`` end to end (every section, a self-contained HTML page, ``--from-runs``
without training, preprocessing x postprocessing ablations)."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import lungseg.evaluation.report as report
from lungseg.cli import main
from lungseg.evaluation.compare import report_from_runs
from lungseg.evaluation.report import Entry, paired_tests, verdict
from trained import lungseg, read_gray

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TABLE_HEADER = ["model", "convention", "parameters", "mDice", "95% CI", "mIoU", "MSE",
                "HD95 (px)", "worst Dice", "pooled Dice", "train time",
                "inference ms/image"]  # fmt: skip
SECTIONS = ["## Results on the test split", "## Which model is best?", "## Training curves",
            "## Sample predictions", "## Data and settings", "## Software"]  # fmt: skip


# Paired statistics on hand-made per-image Dice


def _entry(label: str, dice: np.ndarray) -> Entry:
    rows = [{"stem": f"img{i:02d}", "dice": float(d)} for i, d in enumerate(dice)]
    return Entry(label, Path(label), Path(label), {"dice_mean": float(np.mean(dice))}, rows)


@pytest.fixture
def base() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.80, 0.95, 30)


def test_clearly_better_model_is_significant(base: np.ndarray) -> None:
    higher = base + 0.03 + np.random.default_rng(1).normal(0, 0.005, base.size)
    worse, better = _entry("fcn", base), _entry("unet", higher)
    (test,) = paired_tests([worse, better])
    assert test["a"] == "fcn" and test["b"] == "unet" and test["n"] == 30
    assert test["median_difference"] < 0 and test["significant"]
    assert test["p_holm"] == pytest.approx(stats.wilcoxon(base, higher).pvalue)  # one pair
    sentence = verdict([worse, better], [test])
    assert sentence.startswith("unet has the highest mean Dice")
    assert "unet scores higher than fcn" in sentence


def test_identical_models_are_not_significant(base: np.ndarray) -> None:
    tests = paired_tests([_entry("a", base), _entry("b", base.copy())])
    assert tests[0]["p_value"] == 1.0 and not tests[0]["significant"]
    sentence = verdict([_entry("a", base), _entry("b", base)], tests)
    assert "No difference in per-image Dice between the models is significant" in sentence


def test_three_models_one_better(base: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    b = _entry("fcn", base + rng.normal(0, 0.02, base.size))
    c = _entry("deeplabv3", base + rng.normal(0, 0.02, base.size))
    a = _entry("unet", base + 0.05)
    tests = {(t["a"], t["b"]): t for t in paired_tests([a, b, c])}
    assert tests[("unet", "fcn")]["significant"] and tests[("unet", "deeplabv3")]["significant"]
    assert not tests[("fcn", "deeplabv3")]["significant"]
    sentence = verdict([a, b, c], list(tests.values()))
    assert "unet scores higher than fcn" in sentence
    assert "unet scores higher than deeplabv3" in sentence
    assert "The other differences (fcn vs deeplabv3) are not significant" in sentence


def test_holm_step_down_by_hand(base: np.ndarray, monkeypatch) -> None:
    # Raw p 0.01, 0.04, 0.03 -> Holm 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06:
    # 0.04 alone would pass at 0.05, but the step-down stops at the first failure.
    raw = {("a", "b"): 0.01, ("a", "c"): 0.04, ("b", "c"): 0.03}
    labels = iter(raw)

    def fake(x, y):
        return {"n": 30, "n_nonzero": 30, "statistic": 1.0, "median_difference": 0.1,
                "p_value": raw[next(labels)]}  # fmt: skip

    monkeypatch.setattr(report, "paired_wilcoxon", fake)
    tests = {(t["a"], t["b"]): t for t in paired_tests([_entry(n, base) for n in "abc"])}
    assert {k: round(t["p_holm"], 10) for k, t in tests.items()} == {
        ("a", "b"): 0.03, ("a", "c"): 0.06, ("b", "c"): 0.06,
    }  # fmt: skip
    assert [tests[k]["significant"] for k in raw] == [True, False, False]


def test_evaluated_on_names_the_split_each_evaluation_scored(base: np.ndarray) -> None:
    def scored(label: str, split: str, n: int) -> Entry:
        entry = _entry(label, base)
        entry.metrics.update(split=split, n_images=n)
        return entry

    assert report.evaluated_on([scored("a", "all", 12), scored("b", "all", 12)]) == (
        "all 12 images (every split)"
    )
    assert report.evaluated_on([scored("a", "test", 36)]) == "the test split (36 images)"
    assert report.evaluated_on([scored("a", "test", 36), scored("b", "val", 63)]) == (
        "the test split (36 images) and the val split (63 images)"
    )


def test_formatting_of_small_p_and_durations() -> None:
    assert report._fmt_p(1.76e-10) == "1.8e-10" and report._fmt_p(0.0312) == "0.0312"
    assert report._duration(4.4) == "4.4 s" and report._duration(600) == "10.0 min"
    assert report._duration(None) == "–"


# lungseg compare on the shared data: three models, one epoch each


def _config(folder: Path) -> Path:
    """One thread and one preparing process: the CPUs are shared."""
    path = folder / "settings.yaml"
    path.write_text("train:\n  threads: 1\n  workers: 1\n")
    return path


@pytest.fixture(scope="module")
def comparison(covid_cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    out = root / "out"
    argv = ["compare", "--data", covid_cxr, "--out", out, "--models", "unet,fcn,deeplabv3",
            "--size", 64, "--epochs", 1, "--n-filters", 4, "--batch-size", 16,
            "--device", "cpu", "--config", _config(root)]  # fmt: skip
    with pytest.raises(SystemExit) as info:  # output: pytest's capture shows it on failure
        main([str(a) for a in argv])
    assert not info.value.code
    return out


def _md_table(text: str, after: str) -> tuple[list[str], list[list[str]]]:
    lines = text[text.index(after) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[0], rows[2:]


def _runs(out: Path) -> dict[str, Path]:
    return {p.name.removesuffix("-seed"): p for p in sorted((out / "runs").iterdir())}


@pytest.mark.shared_data
@pytest.mark.slow
def test_compare_report_has_every_section(comparison: Path) -> None:
    import torch

    md = (comparison / "report.md").read_text()
    positions = [md.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    header, rows = _md_table(md, SECTIONS[0])
    assert header == TABLE_HEADER
    runs = _runs(comparison)
    assert [r[0] for r in rows] == ["unet", "fcn", "deeplabv3"]
    assert set(runs) == {"unet", "fcn", "deeplabv3"}
    best = None
    for row in rows:
        run = runs[row[0]]
        metrics = json.loads((run / "eval-seed" / "metrics.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert row[1] == metrics["convention"]
        assert row[2] == f"{summary['params'] / 1e6:.2f} M"
        assert row[3] == f"{metrics['dice_mean']:.4f}"
        low, high = metrics["dice_ci95"]
        assert row[4] == f"{low:.4f}–{high:.4f}"
        assert row[5] == f"{metrics['iou_mean']:.4f}"
        assert row[6] == f"{metrics['mse_mean']:.5f}"
        assert row[10].endswith(" s") and row[11] == f"{metrics['inference_ms_per_image']:.2f}"
        if best is None or metrics["dice_mean"] > best[1]:
            best = (row[0], metrics["dice_mean"])
    # Paired statistics: one Wilcoxon row per pair, and the plain sentence naming the best model.
    test_header, test_rows = _md_table(md, SECTIONS[1])
    assert "p (Wilcoxon)" in test_header and "p (Holm)" in test_header and len(test_rows) == 3
    summary = json.loads((comparison / "comparison.json").read_text())
    assert summary["verdict"].startswith(f"{best[0]} has the highest mean Dice")
    assert summary["verdict"] in md
    # The sample grid names each model's worst test image, recomputed from per_image.csv.
    caption = md[md.index(SECTIONS[3]) : md.index(SECTIONS[4])]
    for label, run in runs.items():
        with open(run / "eval-seed" / "per_image.csv", newline="") as fh:
            per_image = [r for r in csv.DictReader(fh) if r["dice"] != "nan"]
        worst = min(per_image, key=lambda r: float(r["dice"]))["stem"]
        assert f"{label}: {worst}" in caption
    assert "Filled red" in caption and "cyan line" in caption
    assert caption.startswith(f"{SECTIONS[3]}\n\nRandom test images, then each model's worst test")
    n_test = json.loads((runs["unet"] / "eval-seed" / "metrics.json").read_text())["n_images"]
    assert f"## Results on the test split ({n_test} images)\n" in md
    for figure in ("curves.png", "samples.png"):
        assert read_gray(comparison / "figures" / figure).ndim == 3
    settings = md[md.index(SECTIONS[4]) :]
    assert "**dataset**:" in settings and "355 images" in settings
    assert "**split**: train" in settings and "grouped by patient" in settings
    assert settings.count("preprocessing seed (blur, gradient, clahe, normalize, size 64)") == 3
    assert settings.count("postprocessing seed") == 3
    assert f"**evaluated on**: the test split ({n_test} images)\n" in settings
    assert f"torch: {torch.__version__}" in settings


@pytest.mark.shared_data
@pytest.mark.slow
def test_compare_html_is_self_contained(comparison: Path) -> None:
    page = (comparison / "report.html").read_text()
    sources = re.findall(r"""src\s*=\s*["']([^"']*)["']""", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in ("curves.png", "samples.png"):
        embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
        assert (comparison / "figures" / name).read_bytes() in embedded
    for outside in ("href=", "<link", "<script", "url(", "@import", "http://", "https://"):
        assert outside not in page, outside
    headings = re.findall(r"^## (.*)$", (comparison / "report.md").read_text(), re.MULTILINE)
    assert len(headings) == len(SECTIONS)
    for heading in headings:
        assert f"<h2>{heading}</h2>" in page
    assert "<th>p (Wilcoxon)</th>" in page and "<th>95% CI</th>" in page


@pytest.mark.shared_data
@pytest.mark.slow
def test_report_from_runs_does_not_train(comparison: Path, tmp_path: Path, capsys) -> None:
    _, first = _md_table((comparison / "report.md").read_text(), SECTIONS[0])
    runs = [comparison / "runs" / f"{row[0]}-seed" for row in first]
    watched = [p for run in runs for p in run.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in watched}
    out = tmp_path / "again"
    code, stdout, stderr = lungseg(["compare", "--from-runs", *runs, "--out", out], capsys)
    assert code == 0, stderr
    assert f"report of 3 run(s): {out / 'report.html'}" in stdout
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert {p for run in runs for p in run.rglob("*") if p.is_file()} == set(watched)
    _, rows = _md_table((out / "report.md").read_text(), SECTIONS[0])
    assert [r[0] for r in rows] == [f"{r[0]}-seed" for r in first]
    assert [r[1:9] for r in rows] == [r[1:9] for r in first]
    assert (out / "report.html").is_file()


# Ablation and --from-runs on the bundled examples (no shared data needed)


@pytest.mark.slow
def test_preprocess_postprocess_ablation(examples_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ablation"
    argv = ["compare", "--data", examples_dir, "--out", out, "--models", "unet",
            "--preprocess", "seed,none", "--postprocess", "seed,none", "--size", 64,
            "--epochs", 1, "--n-filters", 4, "--val", 0.25, "--test", 0.25,
            "--device", "cpu", "--config", _config(tmp_path)]  # fmt: skip
    code, stdout, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    _, rows = _md_table((out / "report.md").read_text(), SECTIONS[0])
    assert [r[0] for r in rows] == [
        f"unet · pre={pre} · post={post}" for pre in ("seed", "none") for post in ("seed", "none")
    ]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["unet-none", "unet-seed"]
    md = (out / "report.md").read_text()
    assert "preprocessing none (normalize, size 64)" in md
    assert "postprocessing none" in md
    # Run again: finished runs are reused, nothing is trained twice.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.pt")}
    code, again, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_from_runs_evaluates_a_run_without_evaluation(tiny_run, tmp_path: Path, capsys) -> None:
    run = tmp_path / "tiny-unet"
    shutil.copytree(tiny_run.run, run)
    best = (run / "best.pt").stat().st_mtime_ns
    html = report_from_runs([run], tmp_path / "report")
    assert html == tmp_path / "report" / "report.html"
    assert (run / "eval-recorded" / "metrics.json").is_file()
    assert len(list((run / "eval-recorded" / "masks").glob("*.png"))) == 3
    assert (run / "best.pt").stat().st_mtime_ns == best
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Only one model was evaluated" in md
    argv = ["compare", "--from-runs", tmp_path / "nothing", "--out", tmp_path / "r"]
    code, _, err = lungseg(argv, capsys)
    assert code == 2 and "not a run directory" in err


def test_compare_shipped_evaluates_and_segments_without_training(
    tiny_run, examples_dir: Path, tmp_path: Path, capsys
) -> None:
    # Two "shipped" models: the tiny run's checkpoint under two names, plus their ensemble.
    first, second = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    for target in (first, second):
        target.parent.mkdir()
        shutil.copy(tiny_run.checkpoint, target)
    out = tmp_path / "results"
    argv = ["compare", "--shipped", "--data", examples_dir, "--out", out,
            "--models", f"{first},{second}"]  # fmt: skip
    code, stdout, err = lungseg(argv, capsys)
    assert code == 0, err
    assert "report:" in stdout and (out / "report.html").is_file()
    table = json.loads((out / "comparison.json").read_text())["table"]
    assert [row["model"] for row in table] == ["a", "b"]
    for label in ("a", "b"):
        metrics = json.loads((out / "eval" / label / "metrics.json").read_text())
        assert metrics["split"] == "all" and metrics["n_images"] == 12
        # The history and the parameter count come from the checkpoint, not a run directory.
        assert table[0]["parameters"] != "–" and table[0]["train time"] != "–"
        masks = sorted((out / label / "masks").glob("*.png"))
        assert len(masks) == 12
        original = read_gray(examples_dir / "COVID" / "images" / masks[0].stem)  # x.png.png
        assert read_gray(masks[0]).shape == original.shape  # original resolution
        assert (out / label / "measurements.csv").is_file()
    # The report names what was scored: every image, not the test split.
    md = (out / "report.md").read_text()
    assert "test split" not in md and "test image" not in md
    assert "## Results on all 12 images (every split)\n" in md
    assert "\nRandom images, then each model's worst image by Dice" in md
    assert "- **evaluated on**: all 12 images (every split)\n" in md
    assert "<h2>Results on all 12 images (every split)</h2>" in (out / "report.html").read_text()
    # Identical models: every per-image Dice equal, so no difference can be significant.
    assert (
        "No difference in per-image Dice"
        in json.loads((out / "comparison.json").read_text())["verdict"]
    )


def test_sample_grid_shows_the_stored_xray_when_it_is_on_disk(tiny_run, tmp_path) -> None:
    import dataclasses

    import cv2

    from lungseg.data.cache import load_cache

    data = load_cache(tiny_run.cache)
    image, original = report._shown_image(data, 0)
    stored = cv2.imread(str(Path(data.source) / data.rows[0]["image_key"]), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(stored, (data.size, data.size), interpolation=cv2.INTER_AREA)
    assert original and np.array_equal(image, expected)
    assert not np.array_equal(image, np.asarray(data.images[0]))  # not the preprocessed one
    gone = dataclasses.replace(data, source=str(tmp_path / "moved"))
    image, original = report._shown_image(gone, 0)
    assert not original and np.array_equal(image, np.asarray(data.images[0]))


@pytest.mark.slow
@pytest.mark.parametrize("preprocess", ["preset: clahe", "blur: true\n    gradient: false"])
def test_compare_keeps_every_preprocessing_setting_of_the_config(
    preprocess: str, examples_dir: Path, tmp_path: Path, capsys
) -> None:
    """A YAML's parameters (blur_ksize 7, CLAHE limit 3.0) reach the cache and the run, and a
    YAML of switches only (no preset) is accepted as ``train`` accepts it."""
    from lungseg.data.cache import load_cache
    from lungseg.models.checkpoint import load_checkpoint

    config = tmp_path / "study.yaml"
    config.write_text(
        f"prepare:\n  preprocess:\n    {preprocess}\n    blur_ksize: 7\n"
        "    clahe_clip_limit: 3.0\n    size: 64\n"
        "train:\n  epochs: 1\n  n_filters: 4\n  batch_size: 4\n"
    )
    out = tmp_path / "cmp"
    argv = ["compare", "--data", examples_dir, "--out", out, "--models", "unet",
            "--val", 0.25, "--test", 0.25, "--device", "cpu", "--config", config]  # fmt: skip
    code, _, stderr = lungseg(argv, capsys)
    assert code == 0, stderr
    (cache,) = [p for p in out.iterdir() if p.name.startswith("examples-64-")]
    (run,) = (out / "runs").iterdir()
    for pre in (
        vars(load_cache(cache).config.preprocess),
        load_checkpoint(run / "best.pt")["preprocess"],
    ):
        assert (pre["blur_ksize"], pre["clahe_clip_limit"], pre["size"]) == (7, 3.0, 64)
