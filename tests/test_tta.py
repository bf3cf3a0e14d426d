"""Test-time augmentation: the mean over the 8 symmetries of the square, mapped back to the
input's orientation, so that the prediction of a rotated or mirrored image is the rotated or
mirrored prediction."""
from __future__ import annotations

import numpy as np
import torch

from segmenter.tta import dihedral_mean, with_tta
from unet import UNetSegmenter


def test_an_equivariant_forward_is_unchanged() -> None:
    x = torch.rand(2, 3, 24, 40)
    torch.testing.assert_close(dihedral_mean(lambda t: t * 2, x), x * 2)


def test_the_mean_is_taken_over_the_eight_outputs_mapped_back() -> None:
    x = torch.rand(1, 1, 8, 8)

    def left_weighted(t: torch.Tensor) -> torch.Tensor:  # not equivariant: favours the left columns
        return t * torch.linspace(1, 0, t.shape[-1])

    expected = torch.zeros_like(x)
    for k in range(4):
        for mirror in (False, True):
            t = torch.rot90(x, k, (2, 3))
            t = t.flip(3) if mirror else t
            p = left_weighted(t)
            p = p.flip(3) if mirror else p
            expected += torch.rot90(p, -k, (2, 3)) / 8
    torch.testing.assert_close(dihedral_mean(left_weighted, x), expected)
    assert with_tta(left_weighted, False) is left_weighted


def test_predict_with_tta_is_invariant_to_the_image_orientation(ihc_image) -> None:
    torch.manual_seed(0)
    seg = UNetSegmenter({"n_classes": 1, "depth": 3, "n": 4}, device="cpu")
    image = ihc_image[100:196, 40:168]  # not square: rotations swap height and width
    plain = seg.predict(image, tta=False)
    tta = seg.predict(image, tta=True)
    assert not torch.allclose(plain, tta, atol=1e-3), "an untrained network is far from equivariant"
    for k in range(1, 4):
        rotated = np.ascontiguousarray(np.rot90(image, k))
        torch.testing.assert_close(seg.predict(rotated, tta=True), torch.rot90(tta, k, (1, 2)), atol=1e-5, rtol=1e-4)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    torch.testing.assert_close(seg.predict(mirrored, tta=True), tta.flip(2), atol=1e-5, rtol=1e-4)


def test_tiled_prediction_with_tta_averages_every_tile(ihc_image) -> None:
    torch.manual_seed(0)
    seg = UNetSegmenter({"n_classes": 1, "depth": 3, "n": 4}, device="cpu")
    image = ihc_image[:256, :256]
    whole = seg.predict(image, tile=256, tta=True)
    tiled = seg.predict(image, tile=128, overlap=48, tta=True)
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().mean()) < 0.02
    assert float((tiled - seg.predict(image, tile=128, overlap=48, tta=False)).abs().max()) > 1e-3
