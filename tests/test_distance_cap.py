"""The distance targets' cap (`cyseg train --distance-cap`): objects wider than the cap get one plateau
of 1 in their interior, objects within it keep their own centre; the crops carry it. The CLI's record
and refusals: test_gap_weight.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmenter.sampler import CropSampler
from transforms.instances import distance_target, markers


def wide_and_small() -> np.ndarray:
    """Label 1: a 40 x 180 band, its centre line 20 px from its edge; label 2: a 6 x 6 square beside it."""
    labels = np.zeros((50, 200), np.int32)
    labels[5:45, 5:185] = 1
    labels[20:26, 190:196] = 2
    return labels


def test_without_a_cap_every_object_is_scaled_to_its_own_centre():
    labels = wide_and_small()
    target = distance_target(labels)
    assert target.dtype == np.float32
    for label in (1, 2):
        assert target[labels == label].max() == pytest.approx(1.0)
    assert (target[labels == 0] == 0).all()


def test_a_cap_saturates_wide_objects_and_leaves_the_ones_within_it():
    labels = wide_and_small()
    plain, capped = distance_target(labels), distance_target(labels, cap=10.0)
    assert np.array_equal(capped[labels == 2], plain[labels == 2])  # its greatest distance is under 10 px
    band = labels == 1
    assert capped[band].max() == 1.0 and capped[band].min() > 0
    assert (capped[band] >= plain[band]).all()
    plateau = capped[10 + 10:45 - 10, 60:130]  # 10 px or more from the band's edge
    assert (plateau == 1).all()
    assert capped[5, 100] == pytest.approx(plain[5, 100] * 20 / 10, rel=1e-5)  # the edge row: 1 px of 10, not of 20
    assert np.array_equal(distance_target(labels, cap=0.0), plain)  # 0: off


def test_a_wide_object_shaped_like_two_centres_is_one_plateau_one_marker_when_capped():
    labels = np.zeros((60, 160), np.int32)
    labels[5:55, 5:75] = 1
    labels[5:55, 85:155] = 1
    labels[20:40, 75:85] = 1  # a 20-px waist joins two 50 x 70 lobes: one object
    plain = distance_target(labels)
    assert markers(labels > 0, plain, 0.3).max() == 2  # its own centre twice: split at the waist
    assert markers(labels > 0, distance_target(labels, cap=8.0), 0.3).max() == 1


def test_the_crops_carry_the_capped_distance_and_the_cap_changes_no_draw():
    labels = wide_and_small()
    image = np.repeat(((labels > 0) * 200 + 20).astype(np.uint8)[:, :, None], 3, axis=2)
    mask = (labels > 0).astype(np.uint8)
    instances = [(labels.astype(np.uint16)[:, :, None], np.ones(1, np.float32))]
    plain = CropSampler([image], [mask], 48, 3, seed=1, colour=False, translate=0.0, instances=instances)
    capped = CropSampler([image], [mask], 48, 3, seed=1, colour=False, translate=0.0, instances=instances,
                         distance_cap=4.0)
    for i in range(3):
        x, target, _, _ = plain[i]
        x_c, target_c, _, _ = capped[i]
        assert torch.equal(x, x_c) and torch.equal(target[0], target_c[0])
        inside = target[0] > 0.5
        assert (target_c[1][inside] >= target[1][inside]).all() and (target_c[1] == 1).sum() > (target[1] == 1).sum()
