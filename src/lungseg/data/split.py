"""Train / validation / test split, grouped by patient and stratified by class.

No patient is ever on two sides: all images of a patient (follow-up days, figure panels a/b/c)
go to the same split, so test scores measure patients the model never saw. Within each class,
patients are shuffled with the seed and dealt to whichever split is furthest below its target
share of images, which keeps the proportions close even when patients have many images.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lungseg.data.dataset import Record
from lungseg.data.settings import check_fractions

SPLITS = ("train", "val", "test")


def split_records(
    records: list[Record], val: float = 0.2, test: float = 0.1, seed: int = 0
) -> list[str]:
    """Assign each record to ``train``, ``val`` or ``test``.

    Args:
        records: the dataset; ``patient_id`` groups images.
        val: validation share of what is left after the test split (the study's 20%).
        test: test share of the whole dataset (the study's 10%).
        seed: the same seed and records give the same split.

    Returns:
        The split name for each record, in the order given.
    """
    check_fractions(val, test)
    targets = np.array([(1 - test) * (1 - val), (1 - test) * val, test])
    rng = np.random.default_rng(seed)
    patients: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        patients[r.patient_id].append(i)
    # A patient's class is its most common one; stratifying by it keeps rare classes in each split.
    by_class: dict[str, list[str]] = defaultdict(list)
    for pid, idx in sorted(patients.items()):
        classes = [records[i].cls for i in idx]
        by_class[max(sorted(set(classes)), key=classes.count)].append(pid)
    out = [""] * len(records)
    for cls in sorted(by_class):
        pids = by_class[cls]
        order = rng.permutation(len(pids))
        counts = np.zeros(3)
        for j in order:
            idx = patients[pids[j]]
            total = counts.sum() + len(idx)
            deficit = targets * total - counts
            deficit[targets == 0] = -np.inf
            side = int(np.argmax(deficit))
            counts[side] += len(idx)
            for i in idx:
                out[i] = SPLITS[side]
    return out
