"""Training: ``train(config, data, out) -> RunResult``, the loop behind ``lungseg train``.

The run directory it writes is described in :mod:`lungseg.training.rundir`.

The loop: the training and validation images live on the training device as uint8 tensors;
each epoch's shuffled order is cut into whole batches (padded by wrapping round, so every step
has one shape), gathered and converted to float there, augmented there
(:mod:`lungseg.training.augment`) and fed to one training step (:mod:`lungseg.training.step`:
forward, ``BCEWithLogitsLoss`` optionally plus soft Dice, backward, fused Adam; one CUDA graph on
a GPU). Nothing in the loop waits for the device: the losses and counts are summed there and
copied to the host once per epoch. Validation computes the same loss, pixel accuracy and the
per-image mean Dice of ``sigmoid(logits) > 0.5`` (no postprocessing). The best weights are those
of the lowest validation loss (the study's rule) or, with ``select="dice"``, the highest Dice.

Reproducibility: each epoch's randomness is a function of ``(seed, epoch)`` alone
(:mod:`lungseg.training.seeding`). A run killed at any
moment and resumed from ``last.pt`` therefore ends with the same history and bit-identical weights
as an uninterrupted run (on the CPU, with the same number of threads; CUDA kernels chosen by
``cudnn.benchmark`` are not bitwise deterministic), without saving generator states.

The ``lr`` column of the history is the rate at the start of each epoch (schedules:
:mod:`lungseg.training.optim`).

Under ``torchrun`` each process trains a DistributedDataParallel replica on its shard of every
epoch (see :mod:`lungseg.training.distributed`); ``batch_size`` is per process. Rank 0 alone
writes files and prints; validation sums are all-reduced, so every rank sees the same metrics.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungseg.core.config import to_dict
from lungseg.core.devices import backend_flags, cpu_has_native_bf16, physical_cores, resolve_device
from lungseg.core.errors import LungsegError
from lungseg.core.locking import exclusive
from lungseg.core.progress import StepBar
from lungseg.data.cache import PreparedData
from lungseg.data.settings import PrepareConfig
from lungseg.models.blocks import count_parameters
from lungseg.training.augment import augment_batch
from lungseg.training.config import TrainConfig, check_run_directory
from lungseg.training.data import check_splits, split_digest, training_data
from lungseg.training.distributed import (
    DistContext,
    all_reduce_sum,
    init_distributed,
    shard,
    shutdown,
    sync_buffers,
)
from lungseg.training.init_weights import load_init, started_from
from lungseg.training.losses import make_loss
from lungseg.training.optim import make_optimizer, make_scheduler
from lungseg.training.rundir import (
    RunResult,
    checkpoint_to_resume,
    training_checkpoint,
    write_start,
    write_summary,
)
from lungseg.training.seeding import AUGMENT, SHUFFLE, derive_seed, seed_epoch
from lungseg.training.step import TRAIN_SUMS, TrainStep, epoch_batches, epoch_row, validate
from lungseg.training.writer import RunWriter, host_copy


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
        with hold, backend_flags(device.type):
            result = _Run(config, prepared, Path(out), device, ctx, progress).run(resume)
        shutdown(ctx)
        return result
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


#: torch.compile's backend (tests count recompiles with a cheaper one).
COMPILE_BACKEND = "inductor"


@dataclass
class _Loop:
    """What every epoch of a run uses: the step, its schedule, the plain model, the training and
    validation ``(images, masks)`` on the device, and the writer (main process only)."""

    step: TrainStep
    scheduler: Any
    model: nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    writer: RunWriter | None


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
        self.init: dict[str, str] | None = None
        self.train_idx, self.val_idx = check_splits(prepared, config.exclude)
        self.split = split_digest(prepared.stems, self.train_idx, self.val_idx)

    def run(self, resume: bool) -> RunResult:
        torch.manual_seed(self.config.seed)
        self.model = self._build_model()
        ckpt = self._checkpoint_to_resume(resume)
        if ckpt is not None:
            self.init = ckpt.get("init")
        elif self.config.init:
            self.init = load_init(
                self.model, self.config.model, self.config.init, self.prepared.config.preprocess
            )
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

    def _excluded(self) -> str:
        """`` (N left out: train.exclude)`` for the start line, or nothing."""
        if not self.config.exclude:
            return ""
        left_out = len(self.prepared.indices("train")) - len(self.train_idx)
        return f" ({left_out} left out of training: train.exclude)"

    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        return checkpoint_to_resume(self.out, resume, self.config, self.split)

    def _write_start(self) -> None:
        if self.ctx.is_main:
            write_start(self.out, self.config, self.prepared)

    # -- training ---------------------------------------------------------------------------

    def _to_device(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array[idx])).to(self.device)

    def _train(self, ckpt: dict[str, Any] | None) -> RunResult:
        cfg, ctx, device = self.config, self.ctx, self.device
        t_setup = time.perf_counter()
        torch.set_num_threads(cfg.threads or max(1, physical_cores() // ctx.local_world_size))
        images = self._to_device(self.prepared.images, self.train_idx)
        masks = self._to_device(self.prepared.masks, self.train_idx)
        val_images = self._to_device(self.prepared.images, self.val_idx)
        val_masks = self._to_device(self.prepared.masks, self.val_idx)

        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = self.model.to(device, memory_format=fmt)
        optimizer = make_optimizer(cfg, model, device)
        per_rank = len(shard(torch.arange(len(self.train_idx)), ctx))
        steps, batch = epoch_batches(torch.arange(per_rank), cfg.batch_size).shape
        self.per_epoch = steps * batch * ctx.world_size  # padded to whole batches
        scheduler = make_scheduler(cfg, optimizer, steps * cfg.epochs)
        start = 1
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            self.history = [dict(row) for row in ckpt["history"]]
            self.best = {"epoch": ckpt["best_epoch"], **ckpt["best_metric"]}
            start = ckpt["epoch"] + 1

        train_net: nn.Module = model
        if ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            train_net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:  # the DDP module, so DDP keeps overlapping its gradient buckets
            train_net = torch.compile(train_net, dynamic=False, backend=COMPILE_BACKEND)
        step = TrainStep(
            train_net, optimizer, make_loss(cfg.loss), self._autocast, log=_log,
            graphs=self._graphs(),
        )  # fmt: skip
        self.n_parameters = count_parameters(model)
        if self.progress:
            _log(
                f"training {self._title()}: {self.n_parameters / 1e6:.2f} M parameters, "
                f"{len(self.train_idx)} training / {len(self.val_idx)} validation images"
                f"{self._excluded()}, {device.type}"
                f"{' x ' + str(ctx.world_size) if ctx.distributed else ''}, "
                f"{'bf16 autocast' if self.bf16 else 'float32'}, epochs {start}-{cfg.epochs}"
                f"{started_from(self.init)}"
            )
        self.setup_seconds = time.perf_counter() - t_setup
        writer = RunWriter(self.out, self._title()) if ctx.is_main else None
        loop = _Loop(step, scheduler, model, (images, masks), (val_images, val_masks), writer)
        try:
            for epoch in range(start, cfg.epochs + 1):
                self._epoch(epoch, loop)
        finally:
            if writer is not None:
                writer.close()
        return self._finish(model)

    def _epoch(self, epoch: int, loop: _Loop) -> None:
        cfg, ctx = self.config, self.ctx
        step, scheduler, model, writer = loop.step, loop.scheduler, loop.model, loop.writer
        t0 = time.perf_counter()
        seed_epoch(cfg.seed, epoch, ctx.rank)
        lr = step.optimizer.param_groups[0]["lr"]
        train_sums, n_images = self._train_epoch(epoch, step, scheduler, *loop.train)
        train_time = time.perf_counter() - t0
        sync_buffers(model, ctx)
        # Validation runs the plain model eagerly: the compiled graph is for training shapes.
        val_sums = validate(model, step.loss_fn, self._val_batches(*loop.val), self.device)
        # The epoch's one copy from the device.
        sums = all_reduce_sum(torch.cat([train_sums, val_sums]), ctx).cpu().tolist()
        row = {"epoch": epoch, **epoch_row(sums, n_images), "lr": float(lr), "seconds": 0.0}
        if not math.isfinite(row["train_loss"]):
            raise LungsegError(
                f"training diverged at epoch {epoch} (train loss {row['train_loss']}); lower --lr"
            )
        self.history.append(row)
        improved = self._update_best(row)
        snapshot = None
        if writer is not None:
            snapshot = training_checkpoint(
                config=cfg, model=model, optimizer=step.optimizer, scheduler=scheduler,
                prepared=self.prepared, history=self.history, best=self.best, split=self.split,
                n_train=len(self.train_idx), n_val=len(self.val_idx), init=self.init,
            )  # fmt: skip
            # The weights are host copies already (plain_state_dict); Adam's and the schedule's
            # state are live (on CUDA the learning rate is a tensor the schedule updates).
            for key in ("optimizer", "scheduler"):
                snapshot[key] = host_copy(snapshot[key])
        # The epoch's time on the training thread: steps, validation and the snapshot.
        row["seconds"] = time.perf_counter() - t0
        if snapshot is not None:
            snapshot["history"][-1]["seconds"] = snapshot["metrics"]["seconds"] = row["seconds"]
            writer.epoch(snapshot, improved, self.best["epoch"])
            if self.progress:
                _log(_epoch_line(row, cfg.epochs, n_images / max(train_time, 1e-9), improved))

    def _train_epoch(self, epoch, step, scheduler, images, masks):
        """The epoch's steps; returns the device sums (loss x images, correct pixels, pixels)
        and the number of images over all processes. Nothing here waits for the device."""
        cfg, ctx, device = self.config, self.ctx, self.device
        shuffle = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, SHUFFLE))
        order = shard(torch.randperm(len(images), generator=shuffle), ctx)
        batches = epoch_batches(order, cfg.batch_size).to(device)
        aug_gen = torch.Generator(device=device).manual_seed(
            derive_seed(cfg.seed, epoch, ctx.rank, AUGMENT)
        )
        sums = torch.zeros(len(TRAIN_SUMS), dtype=torch.float64, device=device)
        step.net.train()
        with StepBar(f"epoch {epoch}/{cfg.epochs}", len(batches), self.progress) as bar:
            for idx in batches:
                x, y = self._batch(images, masks, idx)
                x, y = augment_batch(x, y, cfg.augment, aug_gen)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss, correct = step(x, y)
                if scheduler is not None:
                    scheduler.step()
                sums[0] += loss.double() * len(idx)
                sums[1] += correct
                sums[2] += y.numel()
                bar.advance(loss, len(idx) * ctx.world_size)
        return sums, batches.numel() * ctx.world_size

    def _val_batches(self, images, masks):
        ctx = self.ctx
        mine = torch.arange(ctx.rank, len(images), ctx.world_size, device=self.device)
        batch = 2 * self.config.batch_size
        for start in range(0, len(mine), batch):
            x, y = self._batch(images, masks, mine[start : start + batch])
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _batch(self, images, masks, idx) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[idx].unsqueeze(1).float().div_(255)
        y = masks[idx].unsqueeze(1).float()
        return x, y

    def _autocast(self, cache: bool = True):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=cache
        )

    def _graphs(self) -> bool:
        """Capture the step as a CUDA graph: on CUDA, in one process, without OneCycle."""
        if self.device.type != "cuda":
            return False
        if self.ctx.distributed or self.config.schedule == "onecycle":
            why = "several processes" if self.ctx.distributed else "the onecycle schedule"
            _log(f"CUDA graphs off ({why}); eager steps")
            return False
        return True

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

    def _title(self) -> str:
        pre = self.prepared.config.preprocess
        return f"{self.config.model} ({pre.size}x{pre.size}, preprocess {pre.preset})"

    def _finish(self, model: nn.Module) -> RunResult:
        seconds = float(sum(row["seconds"] for row in self.history))
        epochs = len(self.history)
        speed = self.per_epoch * epochs / seconds if seconds > 0 else 0.0
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
                "setup_seconds": self.setup_seconds,
                "images_per_second": speed,
                "images_per_epoch": self.per_epoch,
                "n_train": len(self.train_idx),
                "n_val": len(self.val_idx),
                "device": self.device.type,
                "precision": "bf16 autocast" if self.bf16 else "float32",
                "world_size": self.ctx.world_size,
            }
            write_summary(self.out, summary)
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
            setup_seconds=self.setup_seconds,
        )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _epoch_line(row: dict[str, Any], epochs: int, speed: float, best: bool) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_dice {row['val_dice']:.4f}  lr {row['lr']:.1e}  "
        f"{speed:.1f} img/s  {row['seconds']:.1f}s" + ("  *best" if best else "")
    )
