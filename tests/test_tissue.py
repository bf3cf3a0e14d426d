"""Background skipping: the tissue mask keeps every annotated nucleus (< 1 % of the ground-truth
foreground in skipped tiles) on slide-like mosaics of real annotated tiles and of isolated nuclei
on glass, finds nothing on blank glass, and handles fluorescence (bright on dark)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segmenter.errors import CysegError
from segmenter.wsi.pyramid import write_pyramid
from segmenter.wsi.readers import open_slide
from segmenter.wsi.tissue import TissueMask, slide_tissue_mask, tissue_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GLASS = (236, 232, 238)
TILE = 512  # the segmentation tile whose skipping is judged


def glass(height: int, width: int, rng: np.random.Generator, noise: int = 2) -> np.ndarray:
    """Empty glass: the glass colour with a little sensor noise."""
    image = np.empty((height, width, 3), np.int16)
    image[:] = GLASS
    image += rng.integers(-noise, noise + 1, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def ihc_items() -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-image's IHC image with its nuclei (Otsu on the haematoxylin channel)."""
    from skimage import color, data, filters

    ihc = data.immunohistochemistry()
    hema = color.rgb2hed(ihc)[:, :, 0]
    return [(ihc, hema > filters.threshold_otsu(hema))]


def shared_items(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and expert masks of a ../shared/data set: miccai15 (H&E tiles, every nucleus
    outlined) or wbc (blood-smear cytology, one white cell with its cytoplasm per image)."""
    folder = DATA / {"miccai15": "miccai15", "wbc": "wbc/dataset1"}[name]
    if not (folder / "images").is_dir():
        pytest.skip(f"{folder} not present (../shared/data is not in a fresh clone)")
    items = []
    for path in sorted((folder / "images").glob("*.png")):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        items.append((image, cv2.imread(str(folder / "masks" / path.name), cv2.IMREAD_GRAYSCALE) > 0))
    return items


def annotated_mosaic(items, height: int, width: int, n_tiles: int, n_objects: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A slide-like image and its ground truth: whole annotated tiles (cell clusters) and single
    annotated objects (nuclei, cells) cut out of them and laid on glass (isolated cells, the hard
    case for a low-resolution mask)."""
    rng = np.random.default_rng(seed)
    image, truth = glass(height, width, rng), np.zeros((height, width), bool)
    taken = np.zeros((height, width), bool)

    def place(h: int, w: int, gap: int) -> tuple[int, int]:
        for _ in range(200):
            y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            if not taken[y:y + h, x:x + w].any():
                break
        taken[max(0, y - gap):y + h + gap, max(0, x - gap):x + w + gap] = True
        return y, x

    for k in range(n_tiles):
        tile, mask = items[k * 5 % len(items)]
        y, x = place(*mask.shape, gap=64)
        image[y:y + mask.shape[0], x:x + mask.shape[1]] = tile
        truth[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
    objects = []
    for tile, mask in items:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        for i in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= 30) + 1:
            x, y, w, h = stats[i, :4]
            objects.append((tile[y:y + h, x:x + w], labels[y:y + h, x:x + w] == i))
    for j in rng.choice(len(objects), n_objects, replace=False):
        pixels, mask = objects[j]
        y, x = place(*mask.shape, gap=32)
        image[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = pixels[mask]
        truth[y:y + mask.shape[0], x:x + mask.shape[1]] |= mask
    return image, truth


def skipped_foreground(tissue: TissueMask, truth: np.ndarray) -> tuple[float, float, float]:
    """(fraction of true foreground in skipped tiles, fraction of tiles skipped, fraction of
    tiles with no foreground at all = the most that could be skipped)."""
    lost, skipped, empty, tiles = 0, 0, 0, 0
    for y in range(0, truth.shape[0], TILE):
        for x in range(0, truth.shape[1], TILE):
            tiles += 1
            inside = int(truth[y:y + TILE, x:x + TILE].sum())
            empty += inside == 0
            if not tissue.any_in(x, y, TILE, TILE):
                skipped += 1
                lost += inside
    return lost / truth.sum(), skipped / tiles, empty / tiles


@pytest.mark.parametrize("source, n_tiles", [("skimage-ihc", 2), ("miccai15", 5), ("wbc", 0)])
def test_skipped_tiles_hold_under_one_percent_of_the_foreground(tmp_path, source, n_tiles):
    """The issue's target, on a JPEG pyramid like a scanner's, with masks as coarse as those of a
    100k-pixel slide (1 mask pixel = 32 or 64 level-0 pixels)."""
    items = ihc_items() if source == "skimage-ihc" else shared_items(source)
    image, truth = annotated_mosaic(items, 4608, 6144, n_tiles=n_tiles, n_objects=60)
    with open_slide(write_pyramid(tmp_path / "mosaic.tif", image, compression="jpeg",
                                  description=f"BUILT from {source} annotated images on glass")) as slide:
        for max_side in (192, 96):
            tissue = slide_tissue_mask(slide, max_side=max_side)
            assert tissue.downsample == pytest.approx(6144 / max_side)
            lost, skipped, empty = skipped_foreground(tissue, truth)
            assert lost < 0.01, (max_side, lost)
            assert skipped > 0.6 * empty, (max_side, skipped, empty)  # and glass is really skipped


def test_ihc_mosaic_tissue_covers_the_ihc_and_not_the_glass(tmp_path):
    from skimage import data

    ihc = data.immunohistochemistry()
    image = glass(1536, 2048, np.random.default_rng(1))
    boxes = [(0, 0), (768, 256), (1280, 1024), (256, 1024)]  # (x, y) of 512x512 copies
    for x, y in boxes:
        image[y:y + 512, x:x + 512] = ihc
    with open_slide(write_pyramid(tmp_path / "ihc.tif", image, compression="jpeg")) as slide:
        tissue = slide_tissue_mask(slide, max_side=128)
    assert tissue.mask.shape == (96, 128) and tissue.downsample == 16
    for x, y in boxes:
        assert tissue.fraction(x, y, 512, 512) > 0.9
    for glass_box in [(1400, 0, 600, 900), (0, 576, 700, 384), (0, 1600, 200, 100)]:
        assert not tissue.any_in(*glass_box), glass_box
        assert tissue.fraction(*glass_box) == 0.0
    assert 0.3 < tissue.mask.mean() < 0.6


@pytest.mark.parametrize("compression", ["jpeg", None])
def test_blank_slide_has_no_tissue(tmp_path, compression):
    image = glass(2048, 2048, np.random.default_rng(2), noise=4)
    with open_slide(write_pyramid(tmp_path / "blank.tif", image, compression=compression)) as slide:
        for max_side in (512, 128, 32):
            assert not slide_tissue_mask(slide, max_side=max_side).mask.any()
    flat = np.full((300, 400, 3), GLASS, np.uint8)
    for method in ("auto", "brightfield", "fluorescence"):
        assert not tissue_mask(flat, 8.0, method=method).mask.any()
    assert not tissue_mask(np.zeros((50, 50, 3), np.uint8), 8.0).mask.any()


def test_fluorescence_bright_nuclei_on_dark_background():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 12, (1024, 1024, 3), dtype=np.uint8)
    image[..., :2] //= 4
    centres = rng.integers(100, 500, (40, 2))  # nuclei in the top-left quarter only
    for cy, cx in centres:
        cv2.circle(image, (int(cx), int(cy)), 7, (10, 20, 180), -1)
    small = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    auto = tissue_mask(small, 4.0)
    assert np.array_equal(auto.mask, tissue_mask(small, 4.0, method="fluorescence").mask)
    for cy, cx in centres:
        assert auto.any_in(int(cx) - 7, int(cy) - 7, 14, 14)
    assert not auto.any_in(600, 0, 424, 1024) and not auto.any_in(0, 600, 1024, 424)


def test_real_dapi_ndpi_uses_fluorescence():
    path = DATA / "slides" / "test3-DAPI-2-387.ndpi"
    if not path.is_file():
        pytest.skip(f"{path} not present (../shared/data is not in a fresh clone)")
    with open_slide(path) as slide:
        auto = slide_tissue_mask(slide, max_side=256)
        assert np.array_equal(auto.mask, slide_tissue_mask(slide, max_side=256, method="fluorescence").mask)
        assert 0.3 < auto.mask.mean() < 0.95
        nuclei = slide.read(0, 3968, 512, 512)  # lower band, dense nuclei
        assert nuclei[..., 2].max() > 200 and auto.any_in(0, 3968, 512, 512)


def test_a_pale_rim_joins_its_cell_and_a_pale_speck_stays_glass():
    thumb = np.full((120, 120, 3), 240, np.uint8)  # glass
    cv2.circle(thumb, (40, 40), 20, (233, 233, 233), -1)  # a cell's pale rim: above half the margin only
    cv2.circle(thumb, (40, 40), 10, (120, 120, 120), -1)  # its dense centre
    cv2.circle(thumb, (95, 95), 8, (233, 233, 233), -1)  # a pale speck on its own
    mask = tissue_mask(thumb, 1.0, method="brightfield", dilate_px=0).mask
    assert mask[40, 40] and mask[40, 58] and mask[22, 40]  # the whole rim, out to its edge
    assert not mask[95, 95] and not mask[5, 5]


def test_noisy_glass_does_not_join_into_one_faint_region():
    """Glass whose noise spreads wider than half the margin: half of it is fainter than a low
    percentile + margin / 2, and those pixels would link every cell into one slide-wide region; the
    faint level counts from the glass's median, so only the cells (and their rims) are tissue."""
    rng = np.random.default_rng(3)
    thumb = glass(400, 400, rng, noise=7)
    cells = np.zeros((400, 400), bool)
    for y, x in rng.integers(20, 380, (12, 2)):
        cv2.circle(thumb, (int(x), int(y)), 6, (150, 120, 160), -1)
        cv2.circle(cells.view(np.uint8), (int(x), int(y)), 6, 1, -1)
    mask = tissue_mask(thumb, 1.0, method="brightfield", dilate_px=0).mask
    assert mask[cells].mean() > 0.95
    assert mask.mean() < 3 * cells.mean(), f"{mask.mean():.1%} of the glass marked tissue"


def test_mask_geometry_fraction_and_margin():
    mask = np.zeros((10, 10), bool)
    mask[5, 7] = True  # level-0 pixels x 70..79, y 50..59
    tissue = TissueMask(mask, 10.0)
    assert tissue.any_in(70, 50, 10, 10) and tissue.fraction(70, 50, 10, 10) == 1.0
    assert tissue.fraction(60, 50, 20, 10) == 0.5
    assert not tissue.any_in(0, 0, 60, 50)
    assert tissue.any_in(0, 0, 60, 50, margin=11)  # the grown box reaches x 71, y 61
    assert not tissue.any_in(0, 0, 60, 50, margin=5)
    assert not tissue.any_in(-500, -500, 100, 100, margin=50) and tissue.fraction(-500, -500, 100, 100) == 0.0
    assert tissue.any_in(75, 55, 1000, 1000)  # partly outside the slide
    assert tissue.fraction(70, 50, 20, 20) == 0.25  # outside the slide counts as background


def test_bad_arguments():
    thumb = np.full((20, 20, 3), 200, np.uint8)
    with pytest.raises(CysegError, match="tissue method 'otsu' is not known; use one of auto, brightfield"):
        tissue_mask(thumb, 4.0, method="otsu")
    with pytest.raises(CysegError, match="RGB uint8 thumbnail"):
        tissue_mask(thumb[..., 0], 4.0)
    with pytest.raises(CysegError, match="downsample 0 must be > 0"):
        tissue_mask(thumb, 0)


def test_window_masks_fit_boxes_to_the_cells_whatever_the_slide_size(tmp_path):
    """On a slide as large as a scan, the overview mask is one pixel per 80+ level-0 pixels; the boxes
    skipping infers are fitted on window masks at FINE_RESOLUTION instead, so they are the same
    whether the overview is fine or as coarse as a 100,000 x 170,000 slide's."""
    from segmenter.wsi.tissue import FINE_RESOLUTION, slide_tissue
    from segmenter.wsi.windows import Region, WsiOptions, plan_windows, window_topology

    image = glass(3072, 4096, np.random.default_rng(3))
    cells = [(500, 400), (2300, 700), (3500, 2600), (1200, 2000), (2050, 1500)]  # centres, 40 px discs
    for cx, cy in cells:
        cv2.circle(image, (cx, cy), 20, (120, 60, 140), -1)
    opts = WsiOptions(tile=512, overlap=64, window_size=2048, window_overlap=128)
    region = Region(0, 0, 4096, 3072)
    with open_slide(write_pyramid(tmp_path / "cells.tif", image, compression="jpeg")) as slide:
        fine, coarse = slide_tissue(slide, max_side=512), slide_tissue(slide, max_side=48)
        assert fine.overview.downsample == FINE_RESOLUTION and coarse.overview.downsample == pytest.approx(4096 / 48)
        topology = window_topology(4096, 3072, opts)
        plans = [plan_windows(topology, region, opts, tissue, 16) for tissue in (fine, coarse)]
        overview_only = plan_windows(topology, region, opts, coarse.overview, 16)
    assert [t.boxes for t in plans[0]] == [t.boxes for t in plans[1]]
    for task in plans[1]:
        # a cell's 40 px, the margin on each side, its pale JPEG rim
        assert all(max(bw, bh) <= 40 + 2 * opts.tissue_margin + 10 * FINE_RESOLUTION for *_, bw, bh in task.boxes)
        assert all(any(bx <= cx - task.x - 20 and cx - task.x + 20 <= bx + bw and by <= cy - task.y - 20 and
                       cy - task.y + 20 <= by + bh for bx, by, bw, bh in task.boxes)
                   for cx, cy in cells if task.x + 20 <= cx <= task.x + task.w - 20 and
                   task.y + 20 <= cy <= task.y + task.h - 20)
    area = [sum(bw * bh for t in plan for _, _, bw, bh in t.boxes) for plan in (plans[1], overview_only)]
    assert area[1] > 1.4 * area[0]  # what the coarse overview alone would have inferred


def test_a_mask_placed_at_an_origin_is_read_there():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True  # level-0 x 1000 + 16..23, y 2000 + 8..15
    tissue = TissueMask(mask, 8.0, (1000.0, 2000.0))
    assert tissue.fraction(1016, 2008, 8, 8) == 1.0 and tissue.any_in(1016, 2008, 8, 8)
    assert not tissue.any_in(16, 8, 8, 8) and tissue.fraction(1000, 2000, 32, 32) == 1 / 16
    assert tissue.window_mask(0, 0, 10, 10) is tissue
