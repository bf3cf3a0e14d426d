"""bench/cytology.py: the cytology-shaped benchmark slide reaches its cell fraction with real cells
that never overlap, some of them in clusters, and its rendered mask is its ground truth."""
from __future__ import annotations

import numpy as np

from bench.cytology import cytology_layout
from bench.mosaic import GLASS, foreground_total, render


def test_cells_fill_the_asked_fraction_without_overlapping():
    size = 2048
    placements = cytology_layout(size, size, 0.05, seed=1)
    total = foreground_total(placements)
    assert 0.05 <= total / size ** 2 < 0.08
    mask = render(placements, 0, 0, size, size, "mask")
    assert int(mask.sum()) == total  # no cell covers another: the rendered mask counts every cell pixel once
    image = render(placements, 0, 0, size, size)
    glass = (image == GLASS).all(axis=2)
    assert glass[mask > 0].mean() < 0.01 and glass[mask == 0].mean() > 0.95  # cells on clean glass
    centres = np.array([(p.x + p.mask.shape[1] / 2, p.y + p.mask.shape[0] / 2) for p in placements])
    sides = np.array([max(p.mask.shape) for p in placements])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) - (sides[:, None] + sides[None]) / 2
    np.fill_diagonal(gaps, np.inf)
    assert (gaps.min(axis=1) < 0.25 * sides).sum() >= 2  # some cells sit next to a neighbour: clusters


def test_the_mosaic_says_it_was_built_from_ihc_crops_without_the_real_tiles(monkeypatch, tmp_path):
    from bench import mosaic

    monkeypatch.setattr(mosaic, "TILE_FOLDERS", {"miccai15": tmp_path / "absent"})
    tiles = mosaic.real_tiles()
    assert len(tiles) == 4 and tiles[0][0].shape == (256, 256, 3)
    text = mosaic.describe(1024, 1024, [])
    assert "IHC" in text and "miccai15" not in text
