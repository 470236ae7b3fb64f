"""Settings of a training run: :class:`TrainConfig` and how ``lungseg train`` resolves them.

One road: the dataclass defaults, then a resumed run's settings, then the ``train:`` section of a
settings file, then the flags given (:func:`resolve_run`). The data a run trains on is described
by the ``prepare`` settings (:mod:`lungseg.data.settings`): ``--size`` and ``--preprocess`` are
those settings, checked against a prepared cache or used to prepare a source, not training
settings. This module imports no PyTorch, so the command line can build its help from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lungseg.core.config import Layer, load_yaml, read_section, resolve, to_dict
from lungseg.core.errors import LungsegError
from lungseg.data.settings import asked, prepare_layers
from lungseg.inference import DEFAULT_POSTPROCESS

LOSSES = ("bce", "bce_dice")
SCHEDULES = ("none", "cosine", "onecycle")
SELECT = ("loss", "dice")
DEVICES = ("auto", "cpu", "cuda")
#: Settings that may differ when a run is resumed: they change speed, not what is computed.
RESUMABLE_CHANGES = ("epochs", "device", "threads", "workers", "compile")
#: Keys of ``train_config`` in checkpoints written before the data settings moved to the
#: ``prepare`` section (lungseg 0.1.0); the checkpoint's ``size`` and ``preprocess`` hold them.
LEGACY_KEYS = ("size", "preprocess")
#: Settings newer than some checkpoints, with the value that does what those checkpoints did:
#: a run trained before ``exclude`` existed left nothing out, and one trained before the
#: acquisition augmentations existed had none; each resumes as it was.
ADDED_KEYS: dict[str, Any] = {
    "exclude": [],
    "init": None,
    "augment": {"aspect": 0.0, "sharpness": 0.0, "noise": 0.0},
}


@dataclass
class AugmentConfig:
    """Augmentation switches and ranges (each drawn uniformly per image).

    Attributes:
        enabled: augment the training batches at all.
        rotation: maximum rotation in degrees (``+-``).
        scale: maximum relative zoom (``1 +- scale``).
        shift: maximum shift as a fraction of the image side (``+-``, per axis).
        brightness: maximum offset added to intensities in ``[0, 1]`` (``+-``).
        contrast: maximum relative contrast change around the image mean (``1 +- contrast``).
        gamma: maximum log-gamma change (``gamma = exp(+-log(1 + gamma))``).
        aspect: maximum change of the width:height ratio (``exp(+-log(1 + aspect))``, area
            kept): films squashed to a square from portrait or landscape detectors.
        sharpness: maximum unsharp-mask weight (``+-``): negative softens (digitised film),
            positive sharpens (a vendor's edge enhancement).
        noise: maximum standard deviation of added Gaussian noise, in ``[0, 1]`` units.
    """

    enabled: bool = True
    rotation: float = 10.0
    scale: float = 0.1
    shift: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.1
    aspect: float = 0.0
    sharpness: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self) if f.name != "enabled"):
            if getattr(self, name) < 0:
                raise LungsegError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1 or self.contrast >= 1:
            raise LungsegError("augment.scale and augment.contrast must be < 1")


#: Bounds of settings that a typo makes absurd (``batch_size: 100000000000000000000``): far
#: beyond any real run, far below what would exhaust memory before a line of output.
MAX_EPOCHS = 1_000_000
MAX_BATCH = 65_536
#: Seeds go to NumPy, whose seeds are 32-bit.
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Every setting of a training run; round-trips through ``to_dict`` / ``from_dict``.

    Attributes:
        model: registered model name (``lungseg.models.list_models()``).
        n_filters: base width of the model.
        dropout: dropout probability of the model.
        batch_norm: batch norm after convolutions.
        model_kwargs: further constructor arguments of the model (e.g. ``{"skips": True}``);
            ``n_filters``, ``dropout`` and ``batch_norm`` have their own settings and are refused
            here, so no value can arrive by two roads.
        epochs: total epochs of the run.
        batch_size: images per optimizer step (per process under torchrun).
        lr: Adam learning rate (the peak rate with ``onecycle``).
        weight_decay: Adam weight decay (L2).
        loss: ``bce`` (``BCEWithLogitsLoss``) or ``bce_dice`` (BCE + soft Dice loss).
        schedule: ``none``, ``cosine`` or ``onecycle``, stepped per optimizer step.
        augment: augmentation settings; a bool in YAML switches it with default ranges.
        select: best weights by validation ``loss`` (lowest) or ``dice`` (highest).
        seed: seeds weight init, shuffling, augmentation and dropout.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: bf16 autocast for the training steps on CUDA, and on a CPU with native bf16
            arithmetic (Intel AMX or AVX512-BF16: 1.5-2x the float32 training speed
            there); float32 elsewhere, where emulated bf16 would be slower. The weights,
            optimizer and validation stay float32.
        channels_last: channels-last memory format (faster on CPU and GPU).
        compile: ``torch.compile`` the model.
        threads: CPU threads per process; ``None``: physical cores / processes on the machine.
        workers: processes for preparing a source on the fly (``None``: one per core).
        postprocess: postprocessing preset recorded in the checkpoints.
        exclude: images left out of training, by stem or image key (masks found wrong, e.g.
            drawn in another convention). Validation and test keep every image, so their
            figures stay comparable and a wrong mask there is reported, not hidden; a name that
            is not in the data is an error.
        init: start from these weights instead of random ones (fine-tuning): a shipped model
            name, a checkpoint or a run directory of the same architecture
            (:mod:`lungseg.training.init_weights`).
    """

    model: str = "unet"
    n_filters: int = field(default=16, metadata={"range": (1, 1024)})
    dropout: float = field(default=0.1, metadata={"range": (0.0, 1.0)})
    batch_norm: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = field(default=50, metadata={"range": (1, MAX_EPOCHS)})
    batch_size: int = field(default=16, metadata={"range": (1, MAX_BATCH)})
    lr: float = field(default=1e-3, metadata={"range": (0.0, 10.0)})
    weight_decay: float = field(default=0.0, metadata={"range": (0.0, 10.0)})
    loss: str = "bce"
    schedule: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    select: str = "loss"
    seed: int = field(default=0, metadata={"range": (0, MAX_SEED)})
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    threads: int | None = field(default=None, metadata={"range": (1, 4096)})
    workers: int | None = field(default=None, metadata={"range": (0, 4096)})
    postprocess: str = DEFAULT_POSTPROCESS
    exclude: list[str] = field(default_factory=list)
    init: str | None = None

    def __post_init__(self) -> None:
        from lungseg.models import list_models

        if isinstance(self.augment, bool):
            self.augment = AugmentConfig(enabled=self.augment)
        choices = {
            "model": (self.model, list_models()),
            "loss": (self.loss, LOSSES),
            "schedule": (self.schedule, SCHEDULES),
            "select": (self.select, SELECT),
            "device": (self.device, DEVICES),
        }
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise LungsegError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "n_filters": self.n_filters,
        }
        for name, value in positive.items():
            if value < 1:
                raise LungsegError(f"{name} must be >= 1, got {value}")
        if not self.lr > 0:
            raise LungsegError(f"lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise LungsegError(f"threads must be >= 1, got {self.threads}")
        twice = sorted(set(self.model_kwargs) & set(_OWN_SETTINGS))
        if twice:
            given = ", ".join(f"{k}={self.model_kwargs[k]!r}" for k in twice)
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in twice)
            raise LungsegError(
                f"model argument(s) {given} (--model-arg / model_kwargs) set what {flags} "
                f"(train.{', train.'.join(twice)}) sets; give each setting one way"
            )

    def model_kwargs_resolved(self) -> dict[str, Any]:
        """Constructor arguments for ``create_model(self.model, ...)``."""
        return {**{k: getattr(self, k) for k in _OWN_SETTINGS}, **self.model_kwargs}

    @classmethod
    def expand_input(cls, data: dict[str, Any], where: str = "train") -> dict[str, Any]:
        """``augment: false`` switches augmentation off with the default ranges."""
        data = dict(data)
        if isinstance(data.get("augment"), bool):
            data["augment"] = {"enabled": data["augment"]}
        return data


#: Model constructor arguments that are training settings of their own.
_OWN_SETTINGS = ("n_filters", "dropout", "batch_norm")


@dataclass
class RunSettings:
    """What ``lungseg train`` resolved: the settings, the data and what the data must be.

    Attributes:
        config: the training settings.
        data: a prepared cache, a dataset folder or ``az://`` URL.
        prepare: the ``prepare`` settings that were given (flags, YAML): a cache must agree
            with them; a source is prepared with the defaults overridden by them.
    """

    config: TrainConfig
    data: str
    prepare: dict[str, Any]


def resolve_run(
    out: str | Path,
    flags: dict[str, Any],
    data_flags: dict[str, Any],
    config_file: str | Path | None = None,
    data: str | None = None,
    resume: bool = False,
) -> RunSettings:
    """Resolve everything ``lungseg train`` needs, before anything is written.

    Args:
        out: the run directory.
        flags: training settings given on the command line (``None``: not given).
        data_flags: ``prepare`` settings given on the command line
            (:func:`~lungseg.data.settings.prepare_flags`).
        config_file: a settings file (``train:`` and ``prepare:`` sections).
        data: the training data; with ``resume``, defaults to the run's cache.
        resume: continue the run in ``out`` (its settings are the defaults then).

    Raises:
        LungsegError: no model or data named, nothing to resume, an unknown or conflicting
            setting.
    """
    out = Path(out)
    last = out / "last.pt"
    run_config = out / "config.yaml"
    if resume and not last.is_file() and not run_config.is_file():
        raise LungsegError("nothing to resume: no last.pt (start a run without --resume)", out)
    layers: list[Layer] = []
    if resume and last.is_file():
        layers.append((f"checkpoint {last}", _stored_settings(last)))
    elif resume:  # stopped before its first epoch ended: the settings it was started with
        layers.append(read_section(run_config, "train"))
    section = read_section(config_file, "train")
    layers += [section, ("flags", flags)]
    config = resolve(TrainConfig, layers)
    if not resume and "model" not in section[1] and flags.get("model") is None:
        from lungseg.models import list_models

        raise LungsegError(f"--model is required; valid models: {', '.join(list_models())}")
    if data is None:
        if not (resume and run_config.is_file()):
            raise LungsegError("--data is required (a prepared cache or a dataset folder)")
        data = load_yaml(run_config).get("cache")
    return RunSettings(config, str(data), asked(prepare_layers(config_file, data_flags)))


#: The files a run directory holds; lungseg replaces them in a folder that is a run.
RUN_FILES = ("config.yaml", "best.pt", "last.pt", "history.csv", "curves.png", "summary.json")


def check_run_directory(out: Path) -> None:
    """Refuse to train into a folder that holds files of a run's names it did not write.

    A folder is a lungseg run when its ``config.yaml`` is the one ``train`` writes (a
    ``train:`` section and ``lungseg_version``); any other folder may hold other files, but
    none of :data:`RUN_FILES`, which training would overwrite.

    Raises:
        LungsegError: naming the folder and the files in the way.
    """
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not _written_by_train(out / "config.yaml"):
        raise LungsegError(
            f"holds {', '.join(present)} but is not a lungseg run directory, and training "
            "would overwrite them; choose another --out",
            out,
        )


def _written_by_train(config: Path) -> bool:
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("train"), dict)
        and ("lungseg_version" in data)
    )


def stored_settings(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``train_config`` a checkpoint recorded, without :data:`LEGACY_KEYS`, with
    :data:`ADDED_KEYS` where it is older than them."""
    stored = {k: v for k, v in ckpt["train_config"].items() if k not in LEGACY_KEYS}
    return _with_added(ADDED_KEYS, stored)


def _with_added(added: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    merged = {**copy.deepcopy(added), **stored}
    for key, value in added.items():
        if isinstance(value, dict) and isinstance(stored.get(key), dict):
            merged[key] = _with_added(value, stored[key])
    return merged


def _stored_settings(checkpoint: Path) -> dict[str, Any]:
    from lungseg.models.checkpoint import load_checkpoint

    return stored_settings(load_checkpoint(checkpoint))


def check_resumable(ckpt: dict[str, Any], config: Any, split: str, path: Path) -> None:
    """Refuse to resume ``ckpt`` with other settings or data than it was trained with.

    Only :data:`RESUMABLE_CHANGES` (speed, not results) may differ.

    Raises:
        LungsegError: naming every difference, or a key the checkpoint lacks.
    """
    for key in ("train_config", "optimizer", "history", "epoch", "data"):
        if key not in ckpt:
            raise LungsegError(f"cannot resume: the checkpoint has no {key!r}", path)
    stored = stored_settings(ckpt)
    asked = to_dict(config)
    changed = [
        f"{k}: run has {stored.get(k)!r}, asked {asked[k]!r}"
        for k in asked
        if k not in RESUMABLE_CHANGES and stored.get(k) != asked[k]
    ]
    if stored.get("epochs") != asked["epochs"] and config.schedule != "none":
        changed.append(
            f"epochs: run has {stored.get('epochs')}, asked {asked['epochs']} "
            f"(the {config.schedule} schedule is fixed by the number of epochs)"
        )
    if ckpt["data"].get("split") != split:
        changed.append("data: the training/validation images differ from the run's")
    if changed:
        raise LungsegError(
            "cannot resume with other settings (" + "; ".join(changed) + "); resume with "
            "the run's settings or start a new run in another --out",
            path,
        )
