"""Where a run's randomness comes from: every stream is a function of ``(seed, epoch, rank)``.

At the start of each epoch the global torch (CPU and CUDA), NumPy and ``random`` generators are
reseeded (dropout draws from them), and the shuffle and the augmentation use generators of their
own seeded the same way. An epoch's randomness therefore does not depend on what ran before it,
which is why a resumed run needs no saved generator state to end bit-identical.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int, bits: int = 64) -> int:
    """A seed derived from ``parts`` (e.g. seed, epoch, rank, purpose), well mixed."""
    dtype = np.uint64 if bits == 64 else np.uint32
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype)[0])


#: Purposes, each its own stream.
SHUFFLE, AUGMENT, GLOBAL = 1, 2, 3


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed the global torch (CPU and CUDA), numpy and ``random`` generators for ``epoch``."""
    torch.manual_seed(derive_seed(seed, epoch, rank, GLOBAL))
    np.random.seed(derive_seed(seed, epoch, rank, GLOBAL, bits=32))
    random.seed(derive_seed(seed, epoch, rank, GLOBAL))
