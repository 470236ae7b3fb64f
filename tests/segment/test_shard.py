"""Which shard a process does: ``--shard K/N`` and the schedulers' environments, and the stable
assignment of images to shards."""

from __future__ import annotations

import pytest

from lungseg.core.errors import LungsegError
from lungseg.segment.shard import ENV_SHARDS, Shard, parse_shard, resolve_shard, shard_of


def test_shard_flag() -> None:
    assert parse_shard("2/8") == Shard(2, 8, "--shard")
    assert resolve_shard(" 0 / 1 ") == Shard(0, 1, "--shard")
    for bad in ("8/8", "1", "a/b", "-1/2", "1/0"):
        with pytest.raises(LungsegError, match="K/N"):
            resolve_shard(bad)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1)),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2)),
        # sbatch --array=1-4: task IDs 1..4 are shards 0..3.
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "4",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (2, 4),
        ),  # fmt: skip
        (
            {
                "SLURM_ARRAY_TASK_ID": "0",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "7",
                "SLURM_ARRAY_TASK_COUNT": "8",
                "SLURM_ARRAY_TASK_STEP": "1",
            },
            (0, 8),
        ),  # fmt: skip
        ({"JOB_COMPLETION_INDEX": "5", ENV_SHARDS: "6"}, (5, 6)),
    ],
)
def test_shard_from_the_scheduler(env: dict[str, str], expected: tuple[int, int]) -> None:
    shard = resolve_shard(None, env)
    assert (shard.index, shard.count) == expected
    assert resolve_shard("0/3", env) == Shard(0, 3, "--shard")  # the flag wins


def test_scheduler_settings_that_cannot_shard_are_refused() -> None:
    with pytest.raises(LungsegError, match=ENV_SHARDS):
        resolve_shard(None, {"JOB_COMPLETION_INDEX": "0"})
    with pytest.raises(LungsegError, match="consecutive task IDs"):  # --array=0-10:2
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0",
                             "SLURM_ARRAY_TASK_MAX": "10", "SLURM_ARRAY_TASK_COUNT": "6",
                             "SLURM_ARRAY_TASK_STEP": "2"})  # fmt: skip
    with pytest.raises(LungsegError, match="not a whole number"):
        resolve_shard(None, {"RANK": "x", "WORLD_SIZE": "2"})


def test_every_image_has_exactly_one_stable_shard() -> None:
    keys = [f"COVID/images/{i:05d}.png" for i in range(4000)]
    shards = [Shard(k, 4) for k in range(4)]
    owners = [[s.index for s in shards if s.owns(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [k] for o in owners) for k in range(4)]
    assert min(sizes) > 900  # about a quarter each
    # The same on every machine, in every run and in every lungseg version (not Python's salted
    # hash()): a resumed or re-sharded run relies on it.
    assert shard_of("COVID/images/00000.png", 1000) == 326
