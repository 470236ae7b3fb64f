"""Where computation runs: the one device resolver for training and inference, and CPU facts.

``--device auto|cpu|cuda[:N]`` means the same everywhere: :func:`resolve_device` checks it once.
:func:`physical_cores` and :func:`cpu_has_native_bf16` decide thread counts and whether bf16
autocast pays off on a CPU; :func:`backend_flags` scopes the CUDA speed flags to a block.
PyTorch is imported inside the functions, so importing this module is free for the command line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

from lungseg.core.errors import LungsegError

_CUDA = re.compile(r"cuda(:\d+)?")


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; ``cpu``, ``cuda`` and
    ``cuda:N`` are checked.

    Raises:
        LungsegError: an unknown device, or CUDA asked for where there is none.
    """
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        # One of several processes of a machine (torchrun) takes the GPU of its local rank.
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    if name != "cpu" and not _CUDA.fullmatch(name):
        raise LungsegError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LungsegError(
            f"--device {name} asked, but no CUDA device is available; use --device cpu"
        )
    return name


def physical_cores() -> int:
    """CPU cores this process may run on, counting hyper-threads of one core once."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            cores.add(topo.read_text().strip())
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def local_cores() -> int:
    """The physical cores of this process's share of the machine: :func:`physical_cores` over
    the processes a ``torchrun`` started on it (``LOCAL_WORLD_SIZE``), at least one."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, physical_cores() // local)


def pipeline_threads() -> int:
    """PyTorch threads for a streaming run (``segment``): a third of :func:`local_cores`, at
    least one. The model is about 40 % of the work per image; the rest runs in the pipeline's
    threads on every core, and OpenMP threads that wait for a busy core stall (on 2 loaded
    cores, 2 model threads halved the images/s of 1)."""
    return max(1, local_cores() // 3)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``threads`` for the block, and put back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16).

    Elsewhere PyTorch emulates bf16 on the CPU, slower than float32; older PyTorch releases
    without ``torch.cpu.get_capabilities`` are treated as emulating.
    """
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    try:
        found = capabilities()
    except Exception:  # pragma: no cover - a CPU PyTorch cannot describe
        return False
    return bool(found.get("amx_bf16") or found.get("avx512_bf16"))


@contextlib.contextmanager
def cuda_flags(benchmark: bool, matmul_tf32: bool, cudnn_tf32: bool = True) -> Iterator[None]:
    """cuDNN autotuning and TF32 as given for the block; the process's flags come back after."""
    import torch

    flags = (torch.backends.cudnn, torch.backends.cuda.matmul, torch.backends.cudnn)
    names = ("benchmark", "allow_tf32", "allow_tf32")
    saved = [getattr(obj, name) for obj, name in zip(flags, names, strict=True)]
    for obj, name, value in zip(flags, names, (benchmark, matmul_tf32, cudnn_tf32), strict=True):
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in zip(flags, names, saved, strict=True):
            setattr(obj, name, value)


@contextlib.contextmanager
def backend_flags(device: str) -> Iterator[None]:
    """cuDNN autotuning and TF32 matmuls for the block, on CUDA; the process's previous flags
    come back afterwards, so they do not leak into later work in the same process (another
    model, a benchmark's peer, inference)."""
    if not str(device).startswith("cuda"):
        yield
        return
    with cuda_flags(benchmark=True, matmul_tf32=True):
        yield
