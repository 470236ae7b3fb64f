"""Which images one process does: ``--shard K/N``, or the shard its scheduler gave it.

Every image belongs to exactly one of N shards, by a stable hash of its key (its path relative
to the input), so N processes on any number of machines split an archive without talking to each
other, and a shard's set of images is the same in every run. The shard comes from, in order:

1. ``--shard K/N`` (K counts from 0);
2. ``torchrun`` (and other PyTorch launchers): ``RANK`` of ``WORLD_SIZE``;
3. Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of
   ``SLURM_ARRAY_TASK_COUNT`` (``sbatch --array=0-7`` or ``--array=1-8``; the IDs must be
   consecutive);
4. Kubernetes Indexed Jobs: ``JOB_COMPLETION_INDEX`` of ``LUNGSEG_SHARDS`` (Kubernetes does
   not tell a pod the job's completion count, so the job sets it; see the README);
5. otherwise one shard, 0/1.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lungseg.core.errors import LungsegError

#: Most shards of one archive: far more processes than any cluster runs on one output, few
#: enough that a list of the shards (which are pending) stays small.
MAX_SHARDS = 100_000

#: What a Kubernetes Indexed Job sets to its ``completions`` (the number of shards).
ENV_SHARDS = "LUNGSEG_SHARDS"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``), and where that came from."""

    index: int = 0
    count: int = 1
    source: str = "default"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise LungsegError(
                f"invalid shard {self.index}/{self.count} (from {self.source}): expected K/N "
                "with 0 <= K < N"
            )
        if self.count > MAX_SHARDS:
            raise LungsegError(
                f"invalid shard {self.index}/{self.count} (from {self.source}): N must be at "
                f"most {MAX_SHARDS:,}"
            )

    @property
    def name(self) -> str:
        """``shard-K-of-N``: the shard's folder and file names."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the image with this key is this shard's."""
        return self.count == 1 or shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard of ``key`` among ``count``: the same on every machine and in every run."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str, source: str = "--shard") -> Shard:
    """``"K/N"`` -> :class:`Shard`."""
    found = _SPEC.match(spec)
    if not found:
        raise LungsegError(f"{source} takes K/N (shard K of N, K from 0), got {spec!r}")
    return Shard(int(found[1]), int(found[2]), source)


def resolve_shard(spec: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """The shard of this process: ``spec`` (``--shard``) or the scheduler's environment."""
    if spec:
        return parse_shard(spec)
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return Shard(_int(env, "RANK"), _int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE (torchrun)")
    if "SLURM_ARRAY_TASK_ID" in env:
        return _slurm(env)
    if "JOB_COMPLETION_INDEX" in env:
        if ENV_SHARDS not in env:
            raise LungsegError(
                f"JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but {ENV_SHARDS} is not: "
                f"set {ENV_SHARDS} to the job's completions, or pass --shard K/N"
            )
        return Shard(
            _int(env, "JOB_COMPLETION_INDEX"),
            _int(env, ENV_SHARDS),
            f"JOB_COMPLETION_INDEX/{ENV_SHARDS} (Kubernetes)",
        )
    return Shard()


def _slurm(env: Mapping[str, str]) -> Shard:
    source = "SLURM_ARRAY_TASK_ID (Slurm job array)"
    task, low = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_MIN", 0)
    count = _int(env, "SLURM_ARRAY_TASK_COUNT", 0)
    high = _int(env, "SLURM_ARRAY_TASK_MAX", low + count - 1)
    step = _int(env, "SLURM_ARRAY_TASK_STEP", 1)
    if count < 1 or step != 1 or high - low + 1 != count:
        raise LungsegError(
            "a Slurm job array for lungseg segment needs consecutive task IDs "
            f"(e.g. sbatch --array=0-{max(count, 2) - 1}); got IDs {low}-{high} step {step}, "
            f"{count} tasks; or pass --shard K/N"
        )
    return Shard(task - low, count, source)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(str(value))
    except ValueError:
        raise LungsegError(f"{name}={value!r} is not a whole number") from None
