"""Settings of ``lungseg prepare``: preprocessing and the split, resolved in one place.

:class:`PrepareConfig` is what a prepared cache records (``prepare.yaml``) and what a run's
``config.yaml`` keeps in its ``prepare:`` section. :func:`prepare_layers` turns the flags that
every command taking a dataset shares (``--size``, ``--preprocess``, ``--val``, ``--test``,
``--seed``, ``--convention``) and a settings file into the layers
:func:`~lungseg.core.config.resolve` applies, so
``prepare``, ``train``, ``evaluate`` and ``compare`` resolve them the same way. This module imports
no NumPy: the command line builds its help from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungseg.core.config import Layer, collect, diff, read_section, resolve, to_dict
from lungseg.core.errors import LungsegError
from lungseg.data.preprocessing import PreprocessConfig


def check_fractions(val: float, test: float) -> None:
    """Both shares must be in ``[0, 1)``; raises :class:`LungsegError` naming them otherwise."""
    if not 0 <= test < 1 or not 0 <= val < 1:
        raise LungsegError(f"split fractions must be in [0, 1): val={val}, test={test}")


@dataclass
class PrepareConfig:
    """Settings of ``prepare``: preprocessing and the split.

    Attributes:
        preprocess: the image pipeline and working size.
        val_fraction: validation share of the images left after the test split (the study's 20%).
        test_fraction: test share of all images (the study's 10%).
        seed: seed of the split; the same seed and files give the same split.
        convention: the mask convention of the dataset's masks
            (:data:`~lungseg.models.identity.CONVENTIONS`): ``anatomical`` (the lung behind the
            heart included, as in ``covid-cxr``), ``visible`` (visible lung fields, as in the
            COVID-19 Radiography Database's own masks) or ``unknown``. A model trained on the
            data records it; ``evaluate`` compares it with the model's.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    seed: int = field(default=0, metadata={"range": (0, 2**32 - 1)})
    convention: str = "unknown"

    def __post_init__(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)  # before hours of decoding
        # Imported here: lungseg.models loads PyTorch; the command line's help reads this module.
        from lungseg.models.identity import CONVENTIONS

        if self.convention not in CONVENTIONS:
            raise LungsegError(
                f"unknown mask convention {self.convention!r}; valid: {', '.join(CONVENTIONS)}"
            )


def prepare_flags(
    preprocess: str | None = None,
    size: int | None = None,
    val: float | None = None,
    test: float | None = None,
    seed: int | None = None,
    convention: str | None = None,
) -> dict[str, Any]:
    """The data flags of the command line as a layer of ``prepare`` settings (None: not given)."""
    return {
        "convention": convention,
        "preprocess": {"preset": preprocess, "size": size},
        "val_fraction": val,
        "test_fraction": test,
        "seed": seed,
    }


def prepare_layers(config_file: str | Path | None, flags: Mapping[str, Any]) -> list[Layer]:
    """The ``prepare:`` section of ``config_file``, then ``flags`` (:func:`prepare_flags`)."""
    return [read_section(config_file, "prepare"), ("flags", flags)]


def prepare_settings(config: str | Path | None = None, **flags: Any) -> PrepareConfig:
    """Resolve ``prepare`` settings: defaults -> YAML ``prepare:`` section -> flags.

    Args:
        config: a settings file (its ``prepare:`` section is used).
        **flags: the arguments of :func:`prepare_flags`; ``None`` keeps the YAML's value.
    """
    return resolve(PrepareConfig, prepare_layers(config, prepare_flags(**flags)))


def asked(layers: list[Layer]) -> dict[str, Any]:
    """Only the ``prepare`` settings given in ``layers``: what an existing cache must agree with."""
    return collect(PrepareConfig, layers)


def disagreements(wanted: Mapping[str, Any], config: PrepareConfig) -> list[str]:
    """``key: asked A, cache has B`` for each setting in ``wanted`` that ``config`` lacks."""
    return diff(wanted, to_dict(config))
