"""``lungseg prepare``: build the preprocessed, split cache of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app


def prepare_config(
    preprocess: str | None = None,
    size: int | None = None,
    val: float | None = None,
    test: float | None = None,
    seed: int | None = None,
    config: Path | None = None,
):
    """Resolve preparation settings: defaults -> YAML ``prepare:`` section -> flags.

    A flag left out (None) keeps the YAML's value. The preset (flag, else the YAML's
    ``preprocess.preset``, else ``seed``) gives the step defaults; a ``--preprocess`` flag also
    sets the step switches, overriding the YAML's.
    """
    from lungseg.config import from_dict, load_yaml, merge, to_dict
    from lungseg.data.cache import PrepareConfig
    from lungseg.errors import LungsegError
    from lungseg.preprocessing import PreprocessConfig

    section = (load_yaml(config).get("prepare") or {}) if config is not None else {}
    if not isinstance(section, dict) or not isinstance(section.get("preprocess") or {}, dict):
        raise LungsegError("the 'prepare' section must be a mapping of settings", config)
    preset = preprocess or (section.get("preprocess") or {}).get("preset") or "seed"
    resolved = merge(to_dict(PrepareConfig(PreprocessConfig.preset_config(preset))), section)
    flags = {"val_fraction": val, "test_fraction": test, "seed": seed, "preprocess": {"size": size}}
    if preprocess is not None:
        switches = to_dict(PreprocessConfig.preset_config(preprocess))
        flags["preprocess"].update(
            {k: v for k, v in switches.items() if k == "preset" or isinstance(v, bool)}
        )
    return from_dict(PrepareConfig, merge(resolved, flags), "prepare settings")


@app.command("prepare")
def prepare_command(
    data: Annotated[str, typer.Option(help="Dataset folder or az://CONTAINER/PREFIX.")],
    out: Annotated[Path, typer.Option(help="Cache folder to write.")],
    size: Annotated[int | None, typer.Option(help="Working size in pixels (default 256).")] = None,
    preprocess: Annotated[
        str | None, typer.Option(help="Preset: seed (default), clahe or none.")
    ] = None,
    val: Annotated[
        float | None, typer.Option(help="Validation share of non-test images (default 0.2).")
    ] = None,
    test: Annotated[
        float | None, typer.Option(help="Test share of all images (default 0.1).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split (default 0).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
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
