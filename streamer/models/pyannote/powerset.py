"""Powerset <-> multilabel conversion (pyannote/segmentation-3.0 style outputs).

A powerset model classifies each frame into one of the sets of at most ``max_set_size``
simultaneous speakers among ``num_classes``: the empty set, each speaker alone, each pair...
in that order (sets of size 0, then 1, then 2, each in ``itertools.combinations`` order).
"""
from __future__ import annotations

from itertools import combinations
from math import comb

import torch


def num_powerset_classes(num_classes: int, max_set_size: int) -> int:
    """Number of sets of at most ``max_set_size`` elements among ``num_classes``."""
    return sum(comb(num_classes, size) for size in range(max_set_size + 1))


def powerset_mapping(num_classes: int, max_set_size: int) -> torch.Tensor:
    """``(num_powerset_classes, num_classes)`` 0/1 matrix: which speakers each set holds."""
    if num_classes < 1 or not 0 <= max_set_size <= num_classes:
        raise ValueError(
            f"need num_classes >= 1 and 0 <= max_set_size <= num_classes, "
            f"got {num_classes} and {max_set_size}")
    rows = [subset for size in range(max_set_size + 1)
            for subset in combinations(range(num_classes), size)]
    mapping = torch.zeros(len(rows), num_classes)
    for index, subset in enumerate(rows):
        mapping[index, list(subset)] = 1.0
    return mapping


def to_multilabel(log_probs: torch.Tensor, mapping: torch.Tensor, soft: bool) -> torch.Tensor:
    """``(..., num_powerset_classes)`` log-probabilities -> ``(..., num_classes)``.

    ``soft``: probability that each speaker is active (class probabilities summed per
    speaker). Otherwise the speakers of the most likely class (0/1 values).
    """
    if soft:
        return torch.exp(log_probs) @ mapping
    hard = torch.nn.functional.one_hot(log_probs.argmax(dim=-1), mapping.shape[0])
    return hard.to(mapping.dtype) @ mapping
