"""Training: ``train(config, data, out) -> RunResult``, the loop behind ``lungseg train``.

A run directory records one training run:

* ``config.yaml``: every resolved setting (``train:`` and ``prepare:`` sections, usable as
  ``--config``), written once the inputs are checked, before the first epoch;
* ``best.pt`` and ``last.pt``: checkpoints (:mod:`lungseg.training.checkpoint`) of the best epoch
  and of the last one, replaced atomically at the end of each epoch (best first, then last);
* ``history.csv`` and ``curves.png``: per-epoch metrics and their plot, rewritten each epoch;
* ``summary.json``: model, parameters, epochs, best epoch and metric, training time and speed,
  written when training ends; its presence marks a finished run.

The loop: the training and validation images live in memory as uint8 tensors on the training
device, batches are gathered by index and converted to float there, augmented on the device
(:mod:`lungseg.training.augment`), and fed to the model with Adam and ``BCEWithLogitsLoss``
(optionally plus a soft Dice loss, :mod:`lungseg.training.losses`). Validation computes the same
loss, pixel accuracy and the per-image mean Dice of ``sigmoid(logits) > 0.5`` (no
postprocessing). The best weights are those of the lowest validation loss (the study's rule) or,
with ``select="dice"``, the highest Dice.

Reproducibility: at the start of every epoch the global torch/numpy/random generators are
reseeded from ``(seed, epoch, rank)`` and the shuffle and augmentation use generators seeded
likewise, so each epoch's randomness is a function of ``(seed, epoch)`` alone. A run killed at any
moment and resumed from ``last.pt`` therefore ends with the same history and bit-identical weights
as an uninterrupted run (on the CPU, with the same number of threads; CUDA kernels chosen by
``cudnn.benchmark`` are not bitwise deterministic), without saving generator states.

Learning-rate schedules step once per optimizer step: ``cosine`` anneals from ``lr`` to 0 over
all steps of the run, ``onecycle`` warms up to ``lr`` over the first 30% then anneals. The ``lr``
column of the history is the rate at the start of each epoch.

Under ``torchrun`` each process trains a DistributedDataParallel replica on its shard of every
epoch (see :mod:`lungseg.training.distributed`); ``batch_size`` is per process. Rank 0 alone
writes files and prints; validation sums are all-reduced, so every rank sees the same metrics.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungseg._version import __version__
from lungseg.config import save_yaml, to_dict
from lungseg.data.cache import PreparedData
from lungseg.data.settings import PrepareConfig
from lungseg.devices import cpu_has_native_bf16, physical_cores, resolve_device
from lungseg.errors import LungsegError
from lungseg.io_utils import atomic_write_text
from lungseg.locking import exclusive
from lungseg.progress import StepBar
from lungseg.training.augment import augment_batch
from lungseg.training.checkpoint import load_checkpoint, save_checkpoint, training_checkpoint
from lungseg.training.config import TrainConfig, check_resumable, check_run_directory
from lungseg.training.data import check_splits, split_digest, training_data
from lungseg.training.distributed import (
    DistContext,
    all_reduce_sum,
    init_distributed,
    per_epoch_images,
    shard,
    shutdown,
    sync_buffers,
)
from lungseg.training.losses import make_loss


@dataclass
class RunResult:
    """What :func:`train` returns (on every rank).

    Attributes:
        run_dir: the run directory.
        model: the trained network with the last epoch's weights, unwrapped, in eval mode.
        history: one dict per epoch (the rows of ``history.csv``).
        epochs: epochs completed.
        best_epoch: epoch of the best weights (in ``best.pt``).
        best_metric: ``{"name": "val_loss" | "val_dice", "value": float}``.
        n_parameters: trainable parameters of the model.
        train_seconds: wall time of all epochs (training + validation), across resumes.
        images_per_second: training images per second over ``train_seconds``, all processes.
    """

    run_dir: Path
    model: nn.Module
    history: list[dict[str, Any]]
    epochs: int
    best_epoch: int
    best_metric: dict[str, Any]
    n_parameters: int
    train_seconds: float
    images_per_second: float

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


def train(
    config: TrainConfig,
    data: str | Path | PreparedData,
    out: str | Path,
    *,
    resume: bool = False,
    cache: str | Path | None = None,
    prepare: Mapping[str, Any] | PrepareConfig | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> RunResult:
    """Train a segmentation model and record the run in ``out``.

    Args:
        config: the training settings.
        data: a prepared cache (folder or :class:`PreparedData`), or a dataset folder /
            ``az://`` URL, which is prepared first (into ``cache``).
        out: the run directory.
        resume: continue the run in ``out`` from its ``last.pt`` (settings other than
            :data:`~lungseg.training.config.RESUMABLE_CHANGES` must be those it was started with).
        cache: where to prepare a source (default ``out/../.cache/<name>-<size>-<preset>-<hash>``).
        prepare: ``prepare`` settings the data must have (a cache) or is prepared with (a
            source), as a possibly partial mapping (:func:`lungseg.data.settings.asked`) or a
            whole :class:`PrepareConfig`; default: any cache, or the default settings.
        progress: show progress (a bar on a terminal, one line per epoch otherwise).
        skip_bad: when preparing a source, leave bad files out instead of stopping.

    Returns:
        The :class:`RunResult`.

    Raises:
        LungsegError: unknown model, a size the model cannot take, an empty training or
            validation split, a cache built with other settings than asked, an existing run in
            ``out`` without ``resume``, an unreadable checkpoint or changed settings on resume.
    """
    config = copy.deepcopy(config)
    wanted = to_dict(prepare) if isinstance(prepare, PrepareConfig) else dict(prepare or {})
    device = torch.device(resolve_device(config.device))
    ctx = init_distributed(device.type == "cuda")
    if ctx.distributed and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    threads = torch.get_num_threads()
    try:
        prepared = training_data(
            data, wanted, Path(out), cache, config.workers, ctx, progress, skip_bad
        )
        if ctx.is_main:  # before the lock, which would leave its file in a folder refused
            check_run_directory(Path(out))
        # One process per run directory (rank 0 writes it); a killed holder leaves no lock.
        hold = exclusive(out, "train") if ctx.is_main else contextlib.nullcontext()
        with hold:
            result = _Run(config, prepared, Path(out), device, ctx, progress).run(resume)
        shutdown(ctx)
        return result
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _seed(*parts: int, bits: int = 64) -> int:
    """A seed derived from ``parts`` (e.g. seed, epoch, rank, purpose), well mixed."""
    dtype = np.uint64 if bits == 64 else np.uint32
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype)[0])


_SHUFFLE, _AUGMENT, _GLOBAL = 1, 2, 3


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed the global torch (CPU and CUDA), numpy and ``random`` generators for ``epoch``."""
    torch.manual_seed(_seed(seed, epoch, rank, _GLOBAL))
    np.random.seed(_seed(seed, epoch, rank, _GLOBAL, bits=32))
    random.seed(_seed(seed, epoch, rank, _GLOBAL))


class _Run:
    """One call of :func:`train`: set-up (everything checked before the run directory is
    touched), then the epochs."""

    def __init__(self, config, prepared, out, device, ctx, progress) -> None:
        self.config: TrainConfig = config
        self.prepared: PreparedData = prepared
        self.out: Path = out
        self.device: torch.device = device
        self.ctx: DistContext = ctx
        self.progress = progress and ctx.is_main
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "name": "", "value": math.nan}
        self.train_idx, self.val_idx = check_splits(prepared)
        self.split = split_digest(prepared.stems, self.train_idx, self.val_idx)

    def run(self, resume: bool) -> RunResult:
        torch.manual_seed(self.config.seed)
        self.model = self._build_model()
        ckpt = self._checkpoint_to_resume(resume)
        self._write_start()
        return self._train(ckpt)

    def _build_model(self) -> nn.Module:
        from lungseg.models import create_model, valid_size

        cfg, size = self.config, self.prepared.size
        model = create_model(cfg.model, **cfg.model_kwargs_resolved())
        divisor = model.input_divisor
        if size % divisor:
            lower = size // divisor * divisor
            hint = f"{lower} or {valid_size(size, divisor)}" if lower else str(divisor)
            raise LungsegError(
                f"model {cfg.model} cannot take {size}x{size} images: it needs a size "
                f"divisible by {divisor} (e.g. --size {hint})"
            )
        return model

    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        last = self.out / "last.pt"
        if not resume:
            if last.exists():
                raise LungsegError(
                    "already holds a training run (last.pt); pass --resume to continue it, or "
                    "choose another --out",
                    self.out,
                )
            return None
        if not last.exists():
            if (self.out / "config.yaml").is_file():
                return None  # stopped before its first epoch ended: start it again
            raise LungsegError(
                "nothing to resume: no last.pt (start a run without --resume)", self.out
            )
        ckpt = load_checkpoint(last, map_location=self.device)
        check_resumable(ckpt, self.config, self.split, last)
        return ckpt

    def _write_start(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.json").unlink(missing_ok=True)
        save_yaml(
            {
                "train": self.config,
                "prepare": self.prepared.config,
                "cache": str(self.prepared.path.absolute()),
                "lungseg_version": __version__,
            },
            self.out / "config.yaml",
        )

    # -- training ---------------------------------------------------------------------------

    def _setup_backend(self) -> None:
        cfg, ctx = self.config, self.ctx
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.set_num_threads(cfg.threads or max(1, physical_cores() // ctx.local_world_size))

    def _to_device(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array[idx])).to(self.device)

    def _train(self, ckpt: dict[str, Any] | None) -> RunResult:
        cfg, ctx, device = self.config, self.ctx, self.device
        self._setup_backend()
        images = self._to_device(self.prepared.images, self.train_idx)
        masks = self._to_device(self.prepared.masks, self.train_idx)
        val_images = self._to_device(self.prepared.images, self.val_idx)
        val_masks = self._to_device(self.prepared.masks, self.val_idx)

        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = self.model.to(device, memory_format=fmt)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_rank = len(shard(torch.arange(len(self.train_idx)), ctx))
        steps = math.ceil(per_rank / cfg.batch_size)
        scheduler = _scheduler(cfg, optimizer, steps * cfg.epochs)
        start = 1
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            self.history = [dict(row) for row in ckpt["history"]]
            self.best = {"epoch": ckpt["best_epoch"], **ckpt["best_metric"]}
            start = ckpt["epoch"] + 1

        net = torch.compile(model) if cfg.compile else model
        train_net = net
        if ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            train_net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        loss_fn = make_loss(cfg.loss)
        self.n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.progress:
            _log(
                f"training {self._title()}: {self.n_parameters / 1e6:.2f} M parameters, "
                f"{len(self.train_idx)} training / {len(self.val_idx)} validation images, "
                f"{device.type}{' x ' + str(ctx.world_size) if ctx.distributed else ''}, "
                f"{'bf16 autocast' if self.bf16 else 'float32'}, epochs {start}-{cfg.epochs}"
            )

        for epoch in range(start, cfg.epochs + 1):
            t0 = time.perf_counter()
            seed_epoch(cfg.seed, epoch, ctx.rank)
            lr = optimizer.param_groups[0]["lr"]
            train_stats, train_time = self._train_epoch(
                epoch, train_net, optimizer, scheduler, loss_fn, images, masks, steps
            )
            sync_buffers(model, ctx)
            val_stats = self._validate(net, loss_fn, val_images, val_masks)
            row = {
                "epoch": epoch,
                "train_loss": train_stats["loss"],
                "val_loss": val_stats["loss"],
                "train_acc": train_stats["acc"],
                "val_acc": val_stats["acc"],
                "val_dice": val_stats["dice"],
                "lr": float(lr),
                "seconds": time.perf_counter() - t0,
            }
            if not math.isfinite(row["train_loss"]):
                raise LungsegError(
                    f"training diverged at epoch {epoch} (train loss {row['train_loss']}); "
                    "lower --lr"
                )
            self.history.append(row)
            improved = self._update_best(row)
            if ctx.is_main:
                with _deferred_sigint():
                    self._save(model, optimizer, scheduler, improved)
                if self.progress:
                    speed = train_stats["images"] / max(train_time, 1e-9)
                    _log(_epoch_line(row, cfg.epochs, speed, improved))
        return self._finish(model)

    def _train_epoch(self, epoch, net, optimizer, scheduler, loss_fn, images, masks, steps):
        cfg, ctx, device = self.config, self.ctx, self.device
        shuffle = torch.Generator().manual_seed(_seed(cfg.seed, epoch, _SHUFFLE))
        order = shard(torch.randperm(len(images), generator=shuffle), ctx).to(device)
        aug_gen = torch.Generator(device=device).manual_seed(
            _seed(cfg.seed, epoch, ctx.rank, _AUGMENT)
        )
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        pixels = 0
        t0 = time.perf_counter()
        with StepBar(f"epoch {epoch}/{cfg.epochs}", steps, enabled=self.progress) as bar:
            for step in range(steps):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x, y = self._batch(images, masks, idx)
                x, y = augment_batch(x, y, cfg.augment, aug_gen)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                with torch.no_grad():
                    loss_sum += loss.detach().double() * len(idx)
                    correct += ((logits > 0) == (y > 0.5)).sum()
                pixels += y.numel()
                if bar.enabled:
                    done = (step + 1) * cfg.batch_size * ctx.world_size
                    bar.update(loss=loss.item(), speed=done / (time.perf_counter() - t0))
        elapsed = time.perf_counter() - t0
        totals = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(pixels))])
        totals = all_reduce_sum(totals, ctx).cpu()
        n_images = len(order) * ctx.world_size
        return {
            "loss": float(totals[0] / n_images),
            "acc": float(totals[1] / totals[2]),
            "images": n_images,
        }, elapsed

    @torch.no_grad()
    def _validate(self, net, loss_fn, images, masks) -> dict[str, float]:
        from lungseg.metrics import Confusion, dice_score

        cfg, ctx, device = self.config, self.ctx, self.device
        net.eval()
        mine = torch.arange(ctx.rank, len(images), ctx.world_size, device=device)
        # loss*n, correct pixels, pixels, sum of per-image Dice, images
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        batch = 2 * cfg.batch_size
        for start in range(0, len(mine), batch):
            idx = mine[start : start + batch]
            x, y = self._batch(images, masks, idx)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # float32 even under amp, as inference runs: the recorded Dice, which picks the
            # best epoch, is what the saved weights give.
            logits = net(x).float()
            loss = loss_fn(logits, y)
            pred, target = logits > 0, y > 0.5
            tp = (pred & target).sum((1, 2, 3))
            fp = (pred & ~target).sum((1, 2, 3))
            fn = (~pred & target).sum((1, 2, 3))
            counts = [c.cpu().numpy() for c in (tp, fp, fn)]
            dice = dice_score(Confusion(*counts, np.zeros_like(counts[0])))
            sums += torch.tensor(
                [
                    float(loss) * len(idx),
                    float((pred == target).sum()),
                    float(y.numel()),
                    float(dice.sum()),
                    float(len(idx)),
                ],
                dtype=torch.float64,
                device=device,
            )
        sums = all_reduce_sum(sums, ctx).cpu()
        return {
            "loss": float(sums[0] / sums[4]),
            "acc": float(sums[1] / sums[2]),
            "dice": float(sums[3] / sums[4]),
        }

    def _batch(self, images, masks, idx) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[idx].unsqueeze(1).float().div_(255)
        y = masks[idx].unsqueeze(1).float()
        return x, y

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def bf16(self) -> bool:
        """Whether this run computes in bf16 autocast (see ``TrainConfig.amp``)."""
        if not self.config.amp:
            return False
        return self.device.type == "cuda" or (self.device.type == "cpu" and cpu_has_native_bf16())

    def _update_best(self, row: dict[str, Any]) -> bool:
        name = "val_dice" if self.config.select == "dice" else "val_loss"
        value = row[name]
        best = self.best["value"]
        better = value > best if name == "val_dice" else value < best
        if self.best["epoch"] == 0 or math.isnan(best) or better:
            self.best = {"epoch": row["epoch"], "name": name, "value": value}
            return True
        return False

    def _save(self, model, optimizer, scheduler, improved: bool) -> None:
        from lungseg.plots import history_csv, save_training_curves

        ckpt = training_checkpoint(
            config=self.config, model=model, optimizer=optimizer, scheduler=scheduler,
            prepared=self.prepared, history=self.history, best=self.best, split=self.split,
            n_train=len(self.train_idx), n_val=len(self.val_idx),
        )  # fmt: skip
        # best.pt before last.pt: a crash in between re-runs this epoch, which rewrites both.
        if improved:
            save_checkpoint(self.out / "best.pt", ckpt)
        save_checkpoint(self.out / "last.pt", ckpt)
        atomic_write_text(self.out / "history.csv", history_csv(self.history))
        save_training_curves(
            self.history, self.out / "curves.png", self._title(), self.best["epoch"]
        )

    def _title(self) -> str:
        pre = self.prepared.config.preprocess
        return f"{self.config.model} ({pre.size}x{pre.size}, preprocess {pre.preset})"

    def _finish(self, model: nn.Module) -> RunResult:
        seconds = float(sum(row["seconds"] for row in self.history))
        epochs = len(self.history)
        per_epoch = per_epoch_images(len(self.train_idx), self.ctx)
        speed = per_epoch * epochs / seconds if seconds > 0 else 0.0
        best_metric = {"name": self.best["name"], "value": self.best["value"]}
        if self.ctx.is_main:
            pre = self.prepared.config.preprocess
            summary = {
                "model": self.config.model,
                "model_kwargs": to_dict(model.init_kwargs),
                "params": self.n_parameters,
                "size": pre.size,
                "preprocess": pre.preset,
                "epochs": epochs,
                "best_epoch": self.best["epoch"],
                "best_metric": best_metric,
                "final_metrics": self.history[-1] if self.history else {},
                "train_seconds": seconds,
                "images_per_second": speed,
                "n_train": len(self.train_idx),
                "n_val": len(self.val_idx),
                "device": self.device.type,
                "precision": "bf16 autocast" if self.bf16 else "float32",
                "world_size": self.ctx.world_size,
                "lungseg_version": __version__,
            }
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return RunResult(
            run_dir=self.out,
            model=model.eval(),
            history=self.history,
            epochs=epochs,
            best_epoch=self.best["epoch"],
            best_metric=best_metric,
            n_parameters=self.n_parameters,
            train_seconds=seconds,
            images_per_second=speed,
        )


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps
        )
    return None


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold back Ctrl-C while the epoch's files are replaced, so they stay consistent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _epoch_line(row: dict[str, Any], epochs: int, speed: float, best: bool) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_dice {row['val_dice']:.4f}  lr {row['lr']:.1e}  "
        f"{speed:.1f} img/s  {row['seconds']:.1f}s" + ("  *best" if best else "")
    )
