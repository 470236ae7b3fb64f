"""Training throughput, peak memory and epoch time per model, and the MONAI peer's loop.

Throughput runs the engine's own epoch loop (``_Run._train_epoch`` of
:mod:`lungseg.training.engine` with its ``TrainStep``, the code ``lungseg train`` runs: uint8
tensors on the device, on-device augmentation, channels-last, bf16 autocast on CUDA and on CPUs
with native bf16, fused Adam, ``BCEWithLogitsLoss``, one CUDA graph per step on a GPU) on
replicated real images, one warm-up pass and then several
timed passes, each a sample; the GPU is synchronised before every clock read. The peer, MONAI's
UNet, runs a plain float32 loop on the same images, batch size, size and device, in the same
process, and the U-Net / peer ratio comes from these figures.

Overheads: the time per step where the arithmetic is negligible (a U-Net of width 2 on 16x16
images: the same calls, no work) and the fixed cost per epoch on the training thread, from
``train()`` runs of 1 and 5 steps per epoch for 2 and 8 epochs (see :func:`_overheads`): what
caps a GPU's speed, and what a small epoch pays.

Epoch time runs :func:`lungseg.train` itself (training, validation, the checkpoint snapshot;
the files are written by a background thread) for a few epochs and takes the median epoch after
the first. On CUDA the set is the study's size (3,616 training + 904 validation images) and the
study's whole experiment (3 models x 50 epochs) is, per model, 50 epochs, the first epoch's
warm-up and the run's set-up and last files once. On the CPU a small set is measured and its
epochs, less the fixed cost per epoch, are scaled to the study's size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks import peer
from benchmarks.common import (
    Context,
    PeakMemory,
    Section,
    fmt,
    ratio_stats,
    release_memory,
    stats,
    tile,
)
from lungseg.training import TrainConfig

STUDY_TRAIN, STUDY_VAL, STUDY_EPOCHS = 3616, 904, 50
GOAL_GPU = 3000.0  # U-Net images/s at 256 on an H100/H200
GOAL_PEER = 3.0  # x the MONAI loop
GOAL_STUDY_MIN = 5.0  # minutes for the whole experiment on one GPU


@dataclass(frozen=True)
class Plan:
    """Sizes of one run.

    Attributes:
        size: image side.
        batch: images per step (the engine's default).
        steps: optimizer steps per timed pass.
        passes: timed passes (after one warm-up pass).
        n_train: training images of the epoch runs (validation: a quarter as many, as the
            study's 3,616 + 904).
        epochs: epochs per epoch run (the first is warm-up).
        models: models of the epoch runs (``None``: all).
    """

    size: int
    batch: int
    steps: int
    passes: int
    n_train: int
    epochs: int
    models: tuple[str, ...] | None = None

    @property
    def n_val(self) -> int:
        return max(1, self.n_train // 4)


#: lungseg's default batch size (``TrainConfig.batch_size``), for lungseg and the peer alike.
BATCH = TrainConfig.batch_size
QUICK = Plan(size=64, batch=4, steps=1, passes=1, n_train=8, epochs=2, models=("unet",))
CPU = Plan(size=256, batch=BATCH, steps=2, passes=3, n_train=32, epochs=3)
CUDA = Plan(size=256, batch=BATCH, steps=40, passes=5, n_train=STUDY_TRAIN, epochs=3)


def run(ctx: Context) -> Section:
    from lungseg.models import list_models

    plan = QUICK if ctx.quick else CUDA if ctx.device == "cuda" else CPU
    section = Section("train", ctx)
    prepared = ctx.prepared(plan.size, limit=24 if ctx.quick else None)
    n = plan.batch * plan.steps
    images, masks = tile(prepared.images, n), tile(prepared.masks, n)
    speeds = {}
    for name in list_models():
        samples, peak, what = _engine_speed(ctx, name, plan, images, masks)
        speeds[name] = section.add(
            f"{name}: training throughput", samples, "images/s", f"batch {plan.batch}"
        )
        section.add(f"{name}: peak training memory", [peak / 2**20], "MiB", what)
    peer_ratio = None
    model, why = peer.create()
    if model is None:
        section.notes.append(why)
    else:
        samples, peak, what = _peer_speed(ctx, model, plan, images, masks)
        speeds["peer"] = section.add(
            f"{peer.NAME} (peer, plain loop): training throughput",
            samples,
            "images/s",
            f"batch {plan.batch}, float32, no augmentation",
        )
        section.add(f"{peer.NAME} (peer): peak training memory", [peak / 2**20], "MiB", what)
        peer_ratio = section.add(
            f"unet / {peer.NAME} training throughput",
            ratio_stats(speeds["unet"], speeds["peer"]),
            "x",
            "same run, same images, batch, size and device",
        )["median"]
    _work_table(section, plan, speeds, model is not None)
    fixed = _overheads(ctx, section)
    study = _epochs(ctx, section, plan, prepared, fixed)
    _goals(ctx, section, speeds, peer_ratio, study)
    section.notes += [
        f"Images: real ({ctx.real_data()[1]}) prepared at {plan.size}x{plan.size} with preset "
        f"seed, repeated to fill each pass ({n} images = {plan.steps} steps of {plan.batch}).",
        "Throughput: median over timed passes of the engine's epoch loop after one warm-up "
        f"pass (cuDNN autotuning, allocator); {_threads(ctx)}; {_precision(ctx)}.",
        "Epoch time: lungseg.train() on the same images repeated (4 training images to 1 "
        "validation image), the median epoch after the first (training + validation + the "
        "checkpoint snapshot on the training thread; the files are written by a background "
        "thread); set-up and the last files are counted once per run.",
        "The peer's plain loop has no augmentation and uses PyTorch's default backend flags "
        "(no cuDNN autotuning, no autocast); lungseg's step includes its on-device "
        "augmentation.",
    ]
    return section


def _precision(ctx: Context) -> str:
    from lungseg.core.devices import cpu_has_native_bf16

    if ctx.device == "cuda":
        return "bf16 autocast, TF32, cuDNN benchmark"
    if cpu_has_native_bf16():
        return "bf16 autocast (the engine's default on a CPU with native bf16: AMX/AVX512-BF16)"
    return "float32 (no native bf16 on this CPU)"


def _threads(ctx: Context) -> str:
    from lungseg.core.devices import physical_cores

    if ctx.threads:
        return f"{ctx.threads} CPU thread(s) (quick mode)"
    return f"{physical_cores()} CPU thread(s) (the engine's default: one per physical core)"


def _engine_speed(ctx: Context, name: str, plan: Plan, images: np.ndarray, masks: np.ndarray):
    """The engine's own epoch loop (``_Run._train_epoch`` with its ``TrainStep``), timed per
    pass; the engine's private loop object is built directly so the benchmark times exactly the
    code ``lungseg train`` runs per epoch (the quick test breaks if its signature changes)."""
    from lungseg.core.devices import backend_flags, physical_cores
    from lungseg.data.cache import PreparedData
    from lungseg.data.preprocessing import PreprocessConfig
    from lungseg.data.settings import PrepareConfig
    from lungseg.training.distributed import DistContext
    from lungseg.training.engine import _log, _Run
    from lungseg.training.losses import make_loss
    from lungseg.training.optim import make_optimizer
    from lungseg.training.step import TrainStep

    config = TrainConfig(model=name, batch_size=plan.batch, device=ctx.device, threads=ctx.threads)
    splits = ["train"] * (len(images) - 1) + ["val"]
    data = PreparedData(
        path=ctx.tmp / "steps", images=images, masks=masks,
        rows=[{"stem": f"img{i}", "split": split} for i, split in enumerate(splits)],
        config=PrepareConfig(PreprocessConfig(size=plan.size)),
        source="benchmark: real images repeated",
    )  # fmt: skip
    device = torch.device(ctx.device)
    engine = _Run(config, data, ctx.tmp, device, DistContext(), False)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or physical_cores())
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(masks).to(device)
    torch.manual_seed(config.seed)
    samples = []
    with PeakMemory(ctx.device) as memory, backend_flags(ctx.device):
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        model = engine._build_model().to(device, memory_format=fmt)
        optimizer = make_optimizer(config, model, device)
        step = TrainStep(model, optimizer, make_loss(config.loss), engine._autocast,
                         graphs=engine._graphs(), log=_log)  # fmt: skip
        for epoch in range(1, plan.passes + 2):
            ctx.sync()
            t0 = time.perf_counter()
            _, n_images = engine._train_epoch(epoch, step, None, x, y)
            ctx.sync()
            if epoch > 1:
                samples.append(n_images / (time.perf_counter() - t0))
    del model, optimizer, step, x, y
    release_memory()
    torch.set_num_threads(threads)
    return samples, memory.peak, memory.what


def _peer_speed(ctx: Context, model, plan: Plan, images: np.ndarray, masks: np.ndarray):
    from lungseg.core.devices import physical_cores

    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads or physical_cores())  # as many as lungseg's loop had
    device = torch.device(ctx.device)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(masks).to(device)
    samples = []
    with peer.default_backend(), PeakMemory(ctx.device) as memory:
        trainer = peer.PlainTrainer(model, ctx.device, plan.batch)
        for i in range(plan.passes + 1):
            ctx.sync()
            t0 = time.perf_counter()
            seen = trainer.epoch(x, y, plan.steps)
            ctx.sync()
            if i > 0:
                samples.append(seen / (time.perf_counter() - t0))
    del trainer, x, y
    release_memory()
    torch.set_num_threads(threads)
    return samples, memory.peak, memory.what


def _work_table(section: Section, plan: Plan, speeds: dict, with_peer: bool) -> None:
    """Parameters and FLOPs per image of each model, and the FLOP rate its training reached."""
    from torch.utils.flop_counter import FlopCounterMode

    from lungseg.models import create_model, list_models

    builders = {name: lambda name=name: create_model(name) for name in list_models()}
    if with_peer:
        builders["peer"] = lambda: peer.create()[0]
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # counting needs no speed; threads that fight over cores are slow
    for key, build in builders.items():
        model = build()
        x = torch.rand(1, 1, plan.size, plan.size)
        with FlopCounterMode(display=False) as forward:
            with torch.no_grad():
                model.eval()(x)
        with FlopCounterMode(display=False) as step:
            model.train()(x).sum().backward()
        params = sum(p.numel() for p in model.parameters())
        rate = speeds[key]["median"] * step.get_total_flops() / 1e12
        rows.append(
            [
                peer.NAME if key == "peer" else key,
                f"{params:,}",
                f"{forward.get_total_flops() / 1e9:.2f}",
                f"{step.get_total_flops() / 1e9:.2f}",
                f"{rate:.3g}",
            ]
        )
    torch.set_num_threads(threads)
    section.table(
        f"Work per image at {plan.size}x{plan.size} (torch.utils.flop_counter; a multiply-add "
        "counts 2 FLOPs)",
        ["model", "parameters", "forward GFLOP", "training GFLOP (fwd + bwd)", "training TFLOP/s"],
        rows,
    )


def _epochs(ctx: Context, section: Section, plan: Plan, prepared, fixed: float) -> float:
    """Epoch time and the study's whole experiment with :func:`lungseg.train`.

    An epoch's ``seconds`` (the training thread's time: steps, validation, the checkpoint's
    snapshot) grows with the set, all but the fixed cost per epoch (``fixed``, measured by
    :func:`_overheads`); what ``train()`` spends outside its epochs (set-up, the last files)
    is paid once per run, not per epoch.
    """
    from lungseg.models import list_models

    scale = STUDY_TRAIN / plan.n_train
    how = "measured" if scale == 1 else f"projected x{scale:.0f} from {plan.n_train} images"
    study = dict.fromkeys(("median", "min", "max", "q1", "q3"), 0.0)
    models = plan.models or tuple(list_models())
    for name in models:
        steady, warmup, once = _train_run(ctx, plan, prepared, name)
        section.add(
            f"{name}: set-up and last files, once per run", [once], "s",
            "train() wall clock less its epochs' seconds",
        )  # fmt: skip
        epoch = section.add(
            f"{name}: epoch time, {STUDY_TRAIN:,} train + {STUDY_VAL} val images",
            {**{k: (steady[k] - fixed) * scale + fixed for k in study}, "n": steady["n"]},
            "s",
            f"lungseg.train(): training, validation, checkpoint snapshot; {how}",
        )
        for key in study:
            study[key] += (STUDY_EPOCHS * epoch[key] + warmup + once) / 60
    return section.add(
        f"study's whole experiment: {len(models)} model(s) x {STUDY_EPOCHS} epochs x "
        f"{STUDY_TRAIN:,} images",
        {**study, "n": plan.epochs - 1},
        "min",
        f"sum over models of {STUDY_EPOCHS} epochs, the first epoch's warm-up and each run's "
        f"set-up once; {how}",
    )["median"]


def _train_run(ctx: Context, plan: Plan, prepared, name: str):
    """A ``train()`` run: :func:`stats` of its epochs after the first, the first's extra time,
    and the time ``train()`` spent outside its epochs (set-up and final files, once)."""
    from lungseg.data.cache import PreparedData
    from lungseg.training import train

    splits = ["train"] * plan.n_train + ["val"] * plan.n_val
    data = PreparedData(
        path=ctx.tmp / "epoch-set",
        images=tile(prepared.images, len(splits)),
        masks=tile(prepared.masks, len(splits)),
        rows=[
            {"stem": f"img{i}", "class": "COVID", "patient_id": str(i), "split": split}
            for i, split in enumerate(splits)
        ],
        config=prepared.config,
        source="benchmark: real images repeated",
    )
    config = TrainConfig(
        model=name,
        epochs=plan.epochs,
        batch_size=plan.batch,
        device=ctx.device,
        threads=ctx.threads,
    )
    t0 = time.perf_counter()
    result = train(config, data, ctx.tmp / f"epochs-{name}", progress=False)
    wall = time.perf_counter() - t0
    seconds = [row["seconds"] for row in result.history]
    ctx.log(f"{name}: epochs of {', '.join(map(fmt, seconds))} s; train() {fmt(wall)} s")
    del result
    release_memory()
    steady = stats(seconds[1:])
    return steady, seconds[0] - steady["median"], wall - sum(seconds)


def _overheads(ctx: Context, section: Section) -> float:
    """Per-step and per-epoch overheads of this checkout and, with ``--baseline REF``, of that
    commit, each measured by ``benchmarks/loop_overheads.py`` in a fresh process in this run;
    returns this checkout's fixed cost per epoch in seconds."""
    import json
    import subprocess
    import sys

    from benchmarks.common import REPO

    runs = {"this checkout": REPO / "src"}
    if ctx.baseline:
        worktree = ctx.tmp / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                        str(worktree), ctx.baseline], check=True)  # fmt: skip
        runs[f"baseline {ctx.baseline}"] = worktree / "src"
    fixed = 0.0
    try:
        for label, src in runs.items():
            command = [sys.executable, str(REPO / "benchmarks" / "loop_overheads.py"),
                       "--device", ctx.device, "--out", str(ctx.tmp / "overheads"),
                       "--repeats", "1" if ctx.quick else "3"]  # fmt: skip
            if ctx.threads:
                command += ["--threads", str(ctx.threads)]
            env = {**os.environ, "PYTHONPATH": str(src)}
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            found = json.loads(done.stdout)
            section.add(
                f"unet: time per training step, arithmetic negligible ({label})",
                found["step_ms"], "ms", found["step_note"],
            )  # fmt: skip
            result = section.add(
                f"unet: fixed cost per epoch on the training thread ({label})",
                found["fixed_ms"], "ms", found["fixed_note"],
            )  # fmt: skip
            if label == "this checkout":
                fixed = result["median"] / 1000
    finally:
        if ctx.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(ctx.tmp / "baseline")], check=False)  # fmt: skip
    return fixed


def _goals(ctx: Context, section: Section, speeds: dict, peer_ratio: float | None, study: float):
    gpu_goal = "U-Net training >= 3,000 images/s at 256 on an H100/H200"
    peer_goal = f"U-Net training >= 3x the {peer.NAME} plain loop (same GPU)"
    study_goal = "study's whole experiment (3 models x 50 epochs x 3,616 images) < 5 min, one GPU"
    if ctx.device != "cuda":
        for goal in (gpu_goal, peer_goal, study_goal):
            section.not_judged(goal, "a GPU goal; judged on an H100/H200 run")
        return
    name = torch.cuda.get_device_name(0)
    hopper = "H100" in name or "H200" in name
    if hopper:
        section.goal(gpu_goal, speeds["unet"]["median"], ">=", GOAL_GPU, "images/s")
    else:
        section.not_judged(gpu_goal, f"this GPU is {name}, not an H100/H200")
    if peer_ratio is not None:
        section.goal(peer_goal, float(peer_ratio), ">=", GOAL_PEER, "x")
    else:
        section.not_judged(peer_goal, "MONAI absent on this machine")
    section.goal(study_goal, study, "<", GOAL_STUDY_MIN, "min")
