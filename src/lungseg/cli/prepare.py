"""``lungseg prepare``: build the preprocessed, split cache of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import (
    Config,
    Convention,
    Preprocess,
    Size,
    SkipBad,
    Test,
    Val,
    default,
)
from lungseg.data.settings import PrepareConfig


@app.command("prepare")
def prepare_command(
    data: Annotated[
        list[str],
        typer.Option(
            help="Dataset folder or az://CONTAINER/PREFIX; repeat it to prepare several as one "
            "(each under its folder's name, e.g. --data shenzhen --data covid19-radiography-vp)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Cache folder to write.")],
    size: Size = None,
    preprocess: Preprocess = None,
    val: Val = None,
    test: Test = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the split.", show_default=default(PrepareConfig, "seed")),
    ] = None,
    convention: Convention = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes.")] = None,
    skip_bad: SkipBad = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cache matches.")] = False,
    config: Config = None,
) -> None:
    """Decode, preprocess and split a dataset once into a cache of arrays."""
    from lungseg.data.cache import prepare
    from lungseg.data.settings import prepare_settings

    settings = prepare_settings(
        config,
        preprocess=preprocess,
        size=size,
        val=val,
        test=test,
        seed=seed,
        convention=convention,
    )
    from lungseg.data.combined import open_data

    source = open_data(data)
    data_ = prepare(source, out, settings, workers=workers, skip_bad=skip_bad, force=force)
    counts = {s: len(data_.indices(s)) for s in ("train", "val", "test")}
    skipped = out / "skipped.csv"
    note = f"; skipped files listed in {skipped}" if skipped.exists() else ""
    typer.echo(
        f"prepared {len(data_.rows)} images at {data_.size}x{data_.size} in {out} "
        f"({settings.convention} convention) "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}){note}"
    )
