"""``lungseg prepare``: build the preprocessed, split cache of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app


def prepare_config(
    preprocess: str, size: int, val: float, test: float, seed: int, config: Path | None
):
    """Resolve preparation settings: preset defaults -> YAML ``prepare:`` section -> flags."""
    from lungseg.config import from_dict, load_yaml, merge, to_dict
    from lungseg.data.cache import PrepareConfig
    from lungseg.preprocessing import PreprocessConfig

    resolved = to_dict(PrepareConfig(PreprocessConfig.preset_config(preprocess, size)))
    if config is not None:
        resolved = merge(resolved, load_yaml(config).get("prepare", {}))
    resolved = merge(
        resolved,
        {"val_fraction": val, "test_fraction": test, "seed": seed},
    )
    return from_dict(PrepareConfig, resolved, "prepare settings")


@app.command("prepare")
def prepare_command(
    data: Annotated[str, typer.Option(help="Dataset folder or az://CONTAINER/PREFIX.")],
    out: Annotated[Path, typer.Option(help="Cache folder to write.")],
    size: Annotated[int, typer.Option(help="Working size in pixels (square).")] = 256,
    preprocess: Annotated[str, typer.Option(help="Preset: seed, clahe or none.")] = "seed",
    val: Annotated[float, typer.Option(help="Validation share of non-test images.")] = 0.2,
    test: Annotated[float, typer.Option(help="Test share of all images.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad files, listing them.")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cache matches.")] = False,
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
) -> None:
    """Decode, preprocess and split a dataset once into a cache of arrays."""
    from lungseg.data.cache import prepare

    settings = prepare_config(preprocess, size, val, test, seed, config)
    data_ = prepare(data, out, settings, workers=workers, skip_bad=skip_bad, force=force)
    counts = {s: len(data_.indices(s)) for s in ("train", "val", "test")}
    skipped = out / "skipped.csv"
    note = f"; skipped files listed in {skipped}" if skipped.exists() else ""
    typer.echo(
        f"prepared {len(data_.rows)} images at {data_.size}x{data_.size} in {out} "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}){note}"
    )
