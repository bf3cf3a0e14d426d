"""Training crops: the scale augmentation (`--zoom`) magnifies crops within its range, keeps the
image and its mask aligned, and leaves the method's sampling unchanged when off; `--elastic` warps
image and mask together; `--balance` draws every dataset folder equally often."""
import numpy as np
import pytest

from segmenter.augment import method_augmenter
from segmenter.sampler import CropSampler, image_weights

SQUARE = 32  # side of the checkerboard squares


def checkerboard(height: int = 600, width: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """An RGB checkerboard and its mask (the bright squares): any misalignment shows as disagreement."""
    yy, xx = np.mgrid[:height, :width]
    mask = (((yy // SQUARE) + (xx // SQUARE)) % 2).astype(np.uint8)
    image = np.repeat((40 + 180 * mask)[:, :, None], 3, axis=2).astype(np.uint8)
    return image, mask


def sampler(zoom: float, crop: int = 128, length: int = 64, elastic: bool = False) -> CropSampler:
    image, mask = checkerboard()
    return CropSampler([image], [mask], crop, length, seed=3, colour=False, translate=0.0, zoom=zoom, elastic=elastic)


def square_side(target: np.ndarray) -> float:
    """Mean length of the runs of equal mask values along the rows that cross no crop border."""
    runs = []
    for row in target[::16]:
        edges = np.flatnonzero(np.diff(row)) + 1
        runs += list(np.diff(edges))
    return float(np.mean(runs)) if runs else float(len(target))


def test_zoom_off_cuts_crops_of_the_crop_size():
    s = sampler(0.0)
    assert {s._side(np.random.default_rng(i)) for i in range(50)} == {128}
    sides = [square_side(s[i][1][0].numpy()) for i in range(len(s))]
    assert np.allclose(sides, SQUARE, atol=0.5)


@pytest.mark.parametrize("zoom", [0.4, 1.0])
def test_zoom_draws_magnifications_within_its_range(zoom):
    s = sampler(zoom)
    sides = np.array([s._side(np.random.default_rng(i)) for i in range(400)])
    assert sides.min() >= 128 / (1 + zoom) - 1 and sides.max() <= 128 * (1 + zoom) + 1
    assert (sides < 128 / (1 + zoom / 2)).any() and (sides > 128 * (1 + zoom / 2)).any()  # both ways, not one


def test_zoom_rescales_the_objects_and_keeps_the_mask_aligned():
    s = sampler(1.0)
    sizes = []
    for i in range(len(s)):
        x, target, _, _ = s[i]
        assert x.shape == (3, 128, 128) and target.shape == (1, 128, 128)
        bright = x[0].numpy() > 130
        assert (bright == (target[0].numpy() > 0.5)).mean() > 0.9  # resized together (a shift of a few px: ~0.6)
        sizes.append(square_side(target[0].numpy()))
    assert min(sizes) < SQUARE * 0.8 and max(sizes) > SQUARE * 1.25


def test_zoom_is_reproducible():
    a, b = sampler(0.5), sampler(0.5)
    for i in (0, 7, 31):
        assert (a[i][0] == b[i][0]).all() and (a[i][1] == b[i][1]).all()


def test_elastic_warps_image_and_mask_together():
    plain, warped = sampler(0.0), sampler(0.0, elastic=True)
    moved = []
    for i in range(32):
        x, target, _, _ = warped[i]
        assert ((x[0].numpy() > 130) == (target[0].numpy() > 0.5)).mean() > 0.98
        moved.append(float((target != plain[i][1]).float().mean()))
    assert 8 <= sum(m > 0 for m in moved) <= 24  # half the crops warped, each by a few pixels at the edges
    assert 0.005 < max(moved) < 0.3


def test_elastic_moves_labels_without_blending_them():
    image, mask = checkerboard(128, 128)
    labels = np.where(mask > 0, 200, 3).astype(np.uint16)
    augment = method_augmenter(translate=0.0, elastic=True)
    for seed in range(8):
        augment.set_random_seed(seed)
        assert set(np.unique(augment(image=image, mask=labels)["mask"])) <= {3, 200}


def test_images_are_drawn_by_area_unless_balanced():
    areas = [100, 100, 100, 700]
    assert np.allclose(image_weights(areas, None), [0.1, 0.1, 0.1, 0.7])
    assert np.allclose(image_weights(areas, [0, 0, 0, 1]), [1 / 6, 1 / 6, 1 / 6, 0.5])
    assert np.allclose(image_weights([100, 300, 50], [0, 0, 1]), [0.125, 0.375, 0.5])


def test_balanced_crops_come_from_each_folder_equally_often():
    large, large_mask = checkerboard(600, 600)
    small = np.full((64, 64, 3), 7, np.uint8)
    groups = CropSampler([large, small], [large_mask, np.zeros((64, 64), np.uint8)], 64, 400, seed=1, colour=False,
                         translate=0.0, groups=[0, 1])
    from_small = sum(bool((groups[i][0] == 7).all()) for i in range(len(groups)))
    assert 160 <= from_small <= 240
