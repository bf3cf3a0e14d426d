"""Seeded subsets: at most so many items of a list, the same ones for the same seed."""
from __future__ import annotations

from typing import TypeVar

import numpy as np

T = TypeVar("T")


def sample(items: list[T], limit: int, seed: int) -> list[T]:
    """The items, or a seeded sample of `limit` of them in their order when there are more."""
    if len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]
