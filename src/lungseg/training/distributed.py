"""Multi-process training under ``torchrun``: process group set-up, sharding and reductions.

``torchrun --nproc_per_node=N -m lungseg train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; each trains a DistributedDataParallel
replica (``nccl`` on CUDA, one GPU per process; ``gloo`` on CPU). Without those variables
training runs in one process and every helper here is a no-op.

Sharding is done by hand rather than with ``DistributedSampler``, with the same result: every
rank draws the same seeded permutation of the training set, pads it by wrapping around to a
multiple of the world size, and takes every ``world_size``-th index starting at its rank. All
ranks therefore see the same number of batches, and together they cover each image once per
epoch (a few twice when padding was needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lungseg.core.errors import LungsegError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        local_world_size: processes on this machine (shares its CPU cores).
        owns_group: this code created the process group and must destroy it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and prints."""
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistContext:
    """Join the ``torchrun`` process group when the environment asks for one.

    Args:
        use_cuda: pick ``nccl`` (and this process's GPU) instead of ``gloo``.

    Returns:
        The process's :class:`DistContext`; ``world_size == 1`` outside ``torchrun``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    owns = False
    if not dist.is_initialized():
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise LungsegError(
                    f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s); "
                    "start at most one process per GPU (torchrun --nproc_per_node)"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return DistContext(rank, world_size, local_rank, local_world_size, owns)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group created by :func:`init_distributed`.

    The barrier first: without it a fast rank may tear the group down while another is still
    in its last collective, and that rank then aborts at exit.
    """
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shard(order: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of ``order`` (a permutation of indices), padded as described above."""
    if not ctx.distributed:
        return order
    total = -(-len(order) // ctx.world_size) * ctx.world_size
    if total > len(order):
        order = torch.cat([order, order[: total - len(order)]])
    return order[ctx.rank :: ctx.world_size]


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` over all ranks, in place (returned for chaining); a no-op in one process."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward pass, so after the last training step
    the ranks' running statistics differ by that step's update; this makes validation and the
    saved weights the same on every rank.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
