"""Scaling: ``lungseg train`` under torchrun with 1 and 2 processes on a small real cache.

Each run is the real command, ``python -m torch.distributed.run --standalone
--nproc_per_node=N -m lungseg train ...`` (gloo on the CPU, where each process takes
cores / N threads, the engine's default; NCCL with one GPU per process on CUDA). Throughput is
read from the run directory: every epoch after the first gives a sample (training images of all
processes / the epoch's seconds from ``history.csv``, validation and checkpoints included), and
``summary.json``'s ``images_per_second`` (all epochs, all processes) is shown beside it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from benchmarks.common import Context, Section, ratio_stats


@dataclass(frozen=True)
class Plan:
    size: int
    limit: int | None  # real pairs in the cache
    copies: int
    epochs: int
    batch: int
    extra: tuple[str, ...] = ()


QUICK = Plan(size=64, limit=12, copies=1, epochs=2, batch=4, extra=("--n-filters", "4"))
CPU = Plan(size=256, limit=64, copies=1, epochs=4, batch=16)
CUDA = Plan(size=256, limit=None, copies=10, epochs=4, batch=16)
MODEL = "unet"


def run(ctx: Context) -> Section:
    plan = QUICK if ctx.quick else CUDA if ctx.device == "cuda" else CPU
    section = Section("scaling", ctx)
    prepared = ctx.prepared(plan.size, plan.limit, plan.copies)
    if ctx.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        counts = [1] + ([gpus] if gpus > 1 else [])
        if gpus == 1:
            section.notes.append("One GPU here: only the 1-process figure (no multi-GPU run).")
    else:
        counts = [1, 2]
    steady = {}
    for procs in counts:
        out = ctx.tmp / f"scaling-{procs}"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={procs}", "-m", "lungseg", "train",
            "--data", str(prepared.path), "--out", str(out), "--model", MODEL,
            "--epochs", str(plan.epochs), "--batch-size", str(plan.batch),
            "--device", ctx.device, *plan.extra,
            *(["--threads", str(ctx.threads)] if ctx.threads else []),
        ]  # fmt: skip
        ctx.log(" ".join(command[2:]))
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        if done.returncode != 0:
            raise RuntimeError(f"torchrun with {procs} process(es) failed:\n{done.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        with open(out / "history.csv", newline="") as fh:
            seconds = [float(row["seconds"]) for row in csv.DictReader(fh)]
        images = summary["images_per_epoch"]  # all processes, whole batches
        what = "process" if procs == 1 else "processes"
        steady[procs] = section.add(
            f"lungseg train, {MODEL}, {procs} {what}: throughput (epochs 2+)",
            [images / s for s in seconds[1:]],
            "images/s",
            f"all processes; {summary['n_train']} train + {summary['n_val']} val images",
        )
        section.add(
            f"lungseg train, {MODEL}, {procs} {what}: summary.json images_per_second",
            [summary["images_per_second"]],
            "images/s",
            "all epochs, first included",
        )
    if len(counts) > 1:
        top = counts[-1]
        section.add(
            f"speed-up {top} processes vs 1",
            ratio_stats(steady[top], steady[1]),
            "x",
            f"{top}.0 = perfect scaling",
        )
    section.notes += [
        f"Cache: {ctx.real_data()[1]}, first {plan.limit or 'all'} pairs x{plan.copies}, "
        f"prepared at {plan.size} (preset seed, default split); {MODEL}, batch {plan.batch} "
        f"per process, {plan.epochs} epochs, augmentation on.",
        "CPU: gloo; each process uses physical cores / processes threads (the engine's "
        "default), so 2 processes on 2 cores run 1 thread each."
        if ctx.device == "cpu"
        else "CUDA: NCCL, one GPU per process.",
    ]
    return section
