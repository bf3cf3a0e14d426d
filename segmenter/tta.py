"""Test-time augmentation: the mean prediction over the 8 symmetries of the square (rotations by
90° and their mirror images), the same group the training augmentation draws from."""
from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def dihedral_mean(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """Mean of `forward` (N, C, H, W -> N, K, H, W) over the 8 rotations/reflections of `x`, each
    output mapped back to the input's orientation."""
    total = None
    for k in range(4):
        for mirror in (False, True):
            t = torch.rot90(x, k, (2, 3))
            if mirror:
                t = t.flip(3)
            p = forward(t.contiguous())
            if mirror:
                p = p.flip(3)
            p = torch.rot90(p, -k, (2, 3))
            total = p.float() if total is None else total + p
    return total / 8


def with_tta(forward: Forward, enabled: bool) -> Forward:
    """`forward`, averaged over the 8 symmetries when `enabled`."""
    return (lambda x: dihedral_mean(forward, x)) if enabled else forward
