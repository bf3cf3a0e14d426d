"""Instance metrics on label images: worked examples for each score, the empty and degenerate cases, property
tests, cross-checks against slow per-object references written from the published definitions, and bad input."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import directed_hausdorff

from metrics import (
    aggregated_jaccard,
    aggregated_jaccard_plus,
    glas_detection,
    match_instances,
    object_dice,
    object_f1,
    object_hausdorff,
    overlaps,
    panoptic_quality,
    split_disconnected,
)

FAST = settings(max_examples=80, deadline=None)


def row(*runs: tuple[int, int, int], width: int) -> np.ndarray:
    """A (1, width) label image with label v on columns start..stop-1 for each (v, start, stop)."""
    image = np.zeros((1, width), dtype=np.int64)
    for value, start, stop in runs:
        image[0, start:stop] = value
    return image


# --- slow references, one object mask at a time -----------------------------------------------------

def ids(labels: np.ndarray) -> list[int]:
    """Positive ids, ascending."""
    return [int(v) for v in np.unique(labels) if v]


def iou(a: np.ndarray, b: np.ndarray) -> Fraction:
    """Exact |A∩B|/|A∪B| of two boolean masks."""
    return Fraction(int((a & b).sum()), int((a | b).sum()))


def reference_pq(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """DQ, SQ, PQ with every (target, prediction) pair tried (Kirillov et al.: a match is IoU > 0.5)."""
    matched = [iou(target == t, pred == p) for t in ids(target) for p in ids(pred)]
    matched = [value for value in matched if value > Fraction(1, 2)]
    tp, fp, fn = len(matched), len(ids(pred)) - len(matched), len(ids(target)) - len(matched)
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    dq = Fraction(tp) / (tp + Fraction(fp + fn, 2))
    sq = sum(matched) / tp if tp else Fraction(0)
    return float(dq), float(sq), float(dq * sq)


def reference_aji(pred: np.ndarray, target: np.ndarray) -> float:
    """AJI as in HoVer-Net's get_fast_aji: each target with its highest-IoU prediction (first, i.e. smallest id,
    on ties), targets overlapping nothing and predictions never chosen added to the union."""
    inter = union = 0
    used: set[int] = set()
    for t in ids(target):
        target_mask = target == t
        best, best_iou = None, Fraction(0)
        for p in ids(pred):
            value = iou(target_mask, pred == p)
            if value > best_iou:
                best, best_iou = p, value
        if best is None:
            union += int(target_mask.sum())
            continue
        used.add(best)
        inter += int((target_mask & (pred == best)).sum())
        union += int((target_mask | (pred == best)).sum())
    union += sum(int((pred == p).sum()) for p in ids(pred) if p not in used)
    return inter / union if union else 1.0


def most_overlapping(mask: np.ndarray, other: np.ndarray) -> int | None:
    """MATLAB's mode of the other image's nonzero labels under `mask` (smallest on ties), None if all zero."""
    values, counts = np.unique(other[mask & (other > 0)], return_counts=True)
    return int(values[np.argmax(counts)]) if values.size else None


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance between the pixel sets of two boolean masks, every pair of pixels compared."""
    pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def reference_object_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """ObjectDice.m of the GlaS evaluation code, line by line."""
    if not ids(pred) or not ids(target):
        return float(ids(pred) == ids(target))
    total = 0.0
    for image, other in ((pred, target), (target, pred)):
        for i in ids(image):
            mask = image == i
            partner = most_overlapping(mask, other)
            other_mask = other == partner if partner is not None else np.zeros_like(mask)
            dice = 2 * (mask & other_mask).sum() / (mask.sum() + other_mask.sum())
            total += mask.sum() / (image > 0).sum() * dice
    return total / 2


def reference_object_hausdorff(pred: np.ndarray, target: np.ndarray) -> float:
    """ObjectHausdorff.m of the GlaS evaluation code, line by line (both images non-empty)."""
    total = 0.0
    for image, other in ((pred, target), (target, pred)):
        for i in ids(image):
            mask = image == i
            partner = most_overlapping(mask, other)
            if partner is None:
                distance = min(hausdorff(mask, other == j) for j in ids(other))
            else:
                distance = hausdorff(mask, other == partner)
            total += mask.sum() / (image > 0).sum() * distance
    return total / 2


# --- strategies -------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 7), st.integers(1, 7))
pixel_labels = st.sampled_from([0, 0, 0, 1, 2, 3, 4])


@st.composite
def label_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, target) small label images: independent, or the prediction a perturbed copy of the target."""
    shape = draw(shapes)
    target = draw(arrays(np.int64, shape, elements=pixel_labels))
    noise = draw(arrays(np.int64, shape, elements=pixel_labels))
    if draw(st.booleans()):
        return noise, target
    changed = draw(arrays(np.bool_, shape, elements=st.booleans()))
    return np.where(changed, noise, target), target


def relabel(labels: np.ndarray, new_ids: list[int]) -> np.ndarray:
    """`labels` with its k-th positive id (ascending) replaced by new_ids[k]; 0 stays 0."""
    lookup = dict(zip(ids(labels), new_ids, strict=False))
    return np.vectorize(lambda v: lookup.get(int(v), 0), otypes=[np.int64])(labels)


def all_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every score of the module on one pair."""
    quality = panoptic_quality(pred, target)
    return {"f1": object_f1(pred, target).f1, "dq": quality.dq, "sq": quality.sq, "pq": quality.pq,
            "aji": aggregated_jaccard(pred, target), "aji_plus": aggregated_jaccard_plus(pred, target),
            "object_dice": object_dice(pred, target), "object_hausdorff": object_hausdorff(pred, target)}


# --- worked examples --------------------------------------------------------------------------------

def test_overlap_table_and_matching_on_a_worked_example() -> None:
    target = row((7, 0, 5), (3, 10, 13), width=14)  # ids out of order, not consecutive
    pred = row((9, 0, 4), (2, 4, 6), (5, 7, 9), width=14)
    table = overlaps(pred, target)
    assert table.target_ids.tolist() == [3, 7] and table.target_areas.tolist() == [3, 5]
    assert table.pred_ids.tolist() == [2, 5, 9] and table.pred_areas.tolist() == [2, 2, 4]
    # target 7 meets prediction 9 (4 pixels) and prediction 2 (1 pixel)
    np.testing.assert_allclose(table.iou_matrix(), [[0, 0, 0], [1 / 6, 0, 4 / 5]])
    match = match_instances(pred, target)
    assert match.target_ids.tolist() == [7] and match.pred_ids.tolist() == [9]
    assert match.iou.tolist() == [pytest.approx(0.8)]
    assert (match.tp, match.fp, match.fn) == (1, 2, 1)


def test_object_f1_and_panoptic_quality_on_a_worked_example() -> None:
    target = row((1, 0, 5), (2, 10, 13), width=14)
    pred = row((1, 0, 4), (2, 7, 9), width=14)  # IoU 4/5 with target 1; prediction 2 and target 2 unmatched
    scores = object_f1(pred, target)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 1)
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)
    quality = panoptic_quality(pred, target)
    assert quality.dq == 0.5 and quality.sq == pytest.approx(0.8) and quality.pq == pytest.approx(0.4)
    strict = object_f1(pred, target, iou_threshold=0.85)
    assert (strict.tp, strict.fp, strict.fn, strict.f1) == (0, 2, 2, 0.0)


def test_iou_of_exactly_one_half_is_not_a_match() -> None:
    target = row((1, 0, 2), width=4)
    pred = row((1, 0, 4), width=4)  # 2/4
    assert object_f1(pred, target).tp == 0
    assert panoptic_quality(pred, target).pq == 0.0


def test_aji_counts_a_prediction_shared_by_two_targets_twice_and_aji_plus_once() -> None:
    target = row((1, 0, 4), (2, 4, 8), width=8)
    pred = row((1, 0, 8), width=8)  # one prediction over two touching targets, IoU 1/2 with each
    # AJI: both targets pick it, C = 4 + 4, U = 8 + 8
    assert aggregated_jaccard(pred, target) == 0.5
    # AJI+: one pair (4 / 8), the other target's 4 pixels join the union
    assert aggregated_jaccard_plus(pred, target) == pytest.approx(4 / 12)
    assert object_f1(pred, target).tp == 0


def test_aji_picks_by_iou_and_adds_unused_predictions_to_the_union() -> None:
    target = row((1, 0, 10), width=30)
    pred = row((1, 4, 30), (2, 0, 4), width=30)  # prediction 1: 6 px of the target + 20 outside; 2: 4 px inside
    # IoU 6/30 against 4/10: the target takes prediction 2, and prediction 1's 26 pixels join the union
    assert aggregated_jaccard(pred, target) == pytest.approx(4 / 36)
    assert aggregated_jaccard_plus(pred, target) == pytest.approx(4 / 36)


@pytest.mark.parametrize(("small_id", "expected"), [("inside", 2 / 12), ("straddling", 3 / 11)])
def test_aji_breaks_iou_ties_towards_the_smallest_prediction_id(small_id: str, expected: float) -> None:
    inside, straddling = (1, 2) if small_id == "inside" else (2, 1)
    target = row((1, 0, 6), width=9)
    pred = row((inside, 0, 2), (straddling, 3, 9), width=9)  # IoU 2/6 and 3/9: equal
    assert aggregated_jaccard(pred, target) == pytest.approx(expected)


def test_glas_object_dice_pairs_by_largest_overlap_not_by_iou() -> None:
    target = row((1, 0, 10), width=30)
    pred = row((1, 4, 30), (2, 0, 4), width=30)
    # predictions: 1 (26 px) with the target, Dice 12/36; 2 (4 px) with the target, Dice 8/14
    # target: the prediction it overlaps most is 1 (6 px against 4), Dice 12/36, though 2 has the higher IoU
    pred_half = 26 / 30 * 12 / 36 + 4 / 30 * 8 / 14
    assert object_dice(pred, target) == pytest.approx((pred_half + 12 / 36) / 2)
    assert object_dice(pred, target) == pytest.approx(22 / 63)


def test_glas_object_dice_weights_objects_by_area_and_scores_zero_without_overlap() -> None:
    target = row((1, 0, 10), width=14)
    pred = row((4, 0, 8), (6, 12, 14), width=14)  # 8 px inside the target, a 2 px speck outside
    pred_half = 8 / 10 * 16 / 18 + 2 / 10 * 0
    assert object_dice(pred, target) == pytest.approx((pred_half + 16 / 18) / 2)


def test_glas_object_hausdorff_uses_the_nearest_object_in_hausdorff_distance() -> None:
    target = row((7, 0, 10), (3, 15, 16), width=16)
    pred = row((5, 0, 9), (9, 11, 12), width=16)
    # prediction 9 (column 11) overlaps nothing: the gap to target 7 is smaller (2 against 4) but its
    # Hausdorff distance is 11, so it is compared with target 3 (distance 4); likewise target 3 with it
    pred_half = 9 / 10 * 1 + 1 / 10 * 4
    target_half = 10 / 11 * 1 + 1 / 11 * 4
    assert object_hausdorff(pred, target) == pytest.approx((pred_half + target_half) / 2)


def test_glas_object_hausdorff_is_euclidean_over_all_pixels() -> None:
    pred = np.zeros((3, 3), dtype=np.uint16)
    target = np.zeros((3, 3), dtype=np.uint16)
    pred[0, 0], target[2, 2] = 1, 1
    assert object_hausdorff(pred, target) == pytest.approx(np.sqrt(8))
    ring = np.zeros((9, 9), dtype=np.uint8)
    ring[[0, 8], :], ring[:, [0, 8]] = 1, 1
    square = np.zeros((9, 9), dtype=np.uint8)
    square[2:7, 2:7] = 2
    # every pixel on the square's outline is within 2 of the ring, and the ring within √8 of the square, but the
    # square's centre is 4 from the ring: the distance is taken over all pixels, not the outlines
    assert object_hausdorff(square, ring) == pytest.approx(4.0)
    assert hausdorff(square > 0, ring > 0) == 4.0


# --- empty and degenerate images --------------------------------------------------------------------

def test_two_empty_images_score_perfectly() -> None:
    empty = np.zeros((4, 5), dtype=np.uint16)
    assert all_scores(empty, empty) == {"f1": 1.0, "dq": 1.0, "sq": 1.0, "pq": 1.0, "aji": 1.0, "aji_plus": 1.0,
                                        "object_dice": 1.0, "object_hausdorff": 0.0}
    scores = object_f1(empty, empty)
    assert (scores.tp, scores.fp, scores.fn, scores.precision, scores.recall) == (0, 0, 0, 1.0, 1.0)


def test_one_empty_image_scores_zero_and_an_infinite_hausdorff_distance() -> None:
    empty = np.zeros((4, 5), dtype=np.uint16)
    objects = np.zeros((4, 5), dtype=np.uint16)
    objects[0, :2], objects[3, 3:] = 4, 8
    for pred, target in ((empty, objects), (objects, empty)):
        assert all_scores(pred, target) == {"f1": 0.0, "dq": 0.0, "sq": 0.0, "pq": 0.0, "aji": 0.0,
                                            "aji_plus": 0.0, "object_dice": 0.0, "object_hausdorff": np.inf}
    missed = object_f1(empty, objects)
    assert (missed.tp, missed.fp, missed.fn, missed.precision, missed.recall) == (0, 0, 2, 1.0, 0.0)
    spurious = object_f1(objects, empty)
    assert (spurious.tp, spurious.fp, spurious.fn, spurious.precision, spurious.recall) == (0, 2, 0, 0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
def test_integer_dtypes_and_sparse_ids_give_the_same_scores(dtype: type) -> None:
    target = row((1, 0, 5), (2, 6, 9), width=12)
    pred = row((1, 0, 4), (2, 5, 9), (3, 10, 12), width=12)
    expected = all_scores(pred, target)
    big = 2**31 + 5 if np.iinfo(dtype).max > 2**31 + 5 else np.iinfo(dtype).max
    sparse_target = relabel(target, [big, 17]).astype(dtype)
    sparse_pred = relabel(pred, [3, 40, big]).astype(dtype)
    assert all_scores(sparse_pred, sparse_target) == pytest.approx(expected)


def test_an_id_over_two_disconnected_regions_is_scored_as_one_object_and_reported() -> None:
    target = row((1, 0, 3), (1, 6, 9), width=9)  # one id, two separate regions
    pred = row((4, 0, 3), (5, 6, 9), width=9)
    assert object_f1(pred, target).tp == 0  # each prediction covers half of the object
    assert aggregated_jaccard(pred, target) == pytest.approx(3 / 9)
    regions, n_split = split_disconnected(target)
    assert n_split == 1 and regions.tolist() == [[1, 1, 1, 0, 0, 0, 2, 2, 2]]
    assert object_f1(pred, regions).tp == 2
    assert split_disconnected(pred)[1] == 0


def test_split_disconnected_follows_the_connectivity() -> None:
    labels = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 9]], dtype=np.uint16)
    regions, n_split = split_disconnected(labels)
    assert n_split == 0 and regions.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    regions, n_split = split_disconnected(labels, connectivity=4)
    assert n_split == 1 and regions.tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 3]]
    assert regions.dtype == np.int64


# --- properties -------------------------------------------------------------------------------------

@FAST
@given(label_pair())
def test_pq_matches_the_reference(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    quality = panoptic_quality(pred, target)
    assert (quality.dq, quality.sq, quality.pq) == pytest.approx(reference_pq(pred, target), rel=1e-12)
    assert quality.dq == pytest.approx(object_f1(pred, target).f1, rel=1e-12)


@FAST
@given(label_pair())
def test_aji_matches_the_reference(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    assert aggregated_jaccard(pred, target) == pytest.approx(reference_aji(pred, target), rel=1e-12)


@FAST
@given(label_pair())
def test_glas_object_dice_and_hausdorff_match_the_official_definitions(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    assert object_dice(pred, target) == pytest.approx(reference_object_dice(pred, target), rel=1e-12)
    if ids(pred) and ids(target):
        assert object_hausdorff(pred, target) == pytest.approx(reference_object_hausdorff(pred, target), rel=1e-6)


@FAST
@given(label_pair())
def test_aji_plus_equals_aji_when_every_target_has_its_own_strict_best_prediction(
        pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    matrix = overlaps(pred, target).iou_matrix()
    rows = [r for r in matrix if r.any()]
    best = [int(np.argmax(r)) for r in rows]
    strict = all(np.count_nonzero(r == r.max()) == 1 for r in rows)
    plus = aggregated_jaccard_plus(pred, target)
    assert 0.0 <= plus <= 1.0
    if strict and len(set(best)) == len(best):
        assert plus == pytest.approx(aggregated_jaccard(pred, target), rel=1e-12)


@FAST
@given(shapes.flatmap(lambda shape: arrays(np.int64, shape, elements=pixel_labels)))
def test_an_image_against_itself_is_perfect(labels: np.ndarray) -> None:
    assert all_scores(labels, labels) == {"f1": 1.0, "dq": 1.0, "sq": 1.0, "pq": 1.0, "aji": 1.0, "aji_plus": 1.0,
                                          "object_dice": 1.0, "object_hausdorff": 0.0}


@FAST
@given(label_pair())
def test_scores_lie_in_their_ranges(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    scores = all_scores(pred, target)
    distance = scores.pop("object_hausdorff")
    assert all(0.0 <= value <= 1.0 for value in scores.values()), scores
    assert distance >= 0.0 and (np.isfinite(distance) or not ids(pred) or not ids(target))
    detection = object_f1(pred, target)
    assert 0.0 <= detection.precision <= 1.0 and 0.0 <= detection.recall <= 1.0


@FAST
@given(label_pair(), st.data())
def test_renaming_objects_changes_no_score(pair: tuple[np.ndarray, np.ndarray], data: st.DataObject) -> None:
    pred, target = pair
    before = all_scores(pred, target)
    new_ids = st.lists(st.integers(1, 2**32 - 1), min_size=4, max_size=4, unique=True)
    shuffled_pred, shuffled_target = relabel(pred, data.draw(new_ids)), relabel(target, data.draw(new_ids))
    # the one-to-one matching does not depend on ids at all
    quality = panoptic_quality(shuffled_pred, shuffled_target)
    assert (object_f1(shuffled_pred, shuffled_target).f1, quality.pq) == pytest.approx((before["f1"], before["pq"]))
    # AJI breaks ties between predictions by id, so any renaming of targets and an order-keeping one of predictions
    ordered = sorted(data.draw(new_ids))
    assert aggregated_jaccard(relabel(pred, ordered), shuffled_target) == pytest.approx(before["aji"])
    # GlaS breaks overlap ties by id on both sides
    ordered_target = sorted(data.draw(new_ids))
    same_order = all_scores(relabel(pred, ordered), relabel(target, ordered_target))
    assert same_order == pytest.approx(before)


@FAST
@given(label_pair())
def test_symmetric_scores_are_symmetric(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    assert object_dice(pred, target) == object_dice(target, pred)
    assert object_hausdorff(pred, target) == object_hausdorff(target, pred)
    assert panoptic_quality(pred, target).pq == panoptic_quality(target, pred).pq
    forward, backward = object_f1(pred, target), object_f1(target, pred)
    assert (forward.f1, forward.precision, forward.recall) == (backward.f1, backward.recall, backward.precision)


@FAST
@given(label_pair(), st.data())
def test_removing_a_prediction_never_raises_recall(pair: tuple[np.ndarray, np.ndarray], data: st.DataObject) -> None:
    pred, target = pair
    if not ids(pred):
        return
    removed = data.draw(st.sampled_from(ids(pred)))
    fewer = np.where(pred == removed, 0, pred)
    before, after = object_f1(pred, target), object_f1(fewer, target)
    assert after.tp in (before.tp, before.tp - 1) and after.recall <= before.recall
    matched = match_instances(pred, target).pred_ids.tolist()
    if removed not in matched:
        # an unmatched prediction: the matches stay, precision cannot drop
        assert after.tp == before.tp and after.precision >= before.precision
        table = overlaps(pred, target)
        used = {int(table.pred_ids[np.argmax(r)]) for r in table.iou_matrix() if r.any()}
        if removed not in used:
            assert aggregated_jaccard(fewer, target) >= aggregated_jaccard(pred, target)


@FAST
@given(shapes.flatmap(lambda shape: arrays(np.int64, shape, elements=pixel_labels)),
       st.sampled_from([4, 8]))
def test_split_disconnected_gives_connected_regions_within_one_id(labels: np.ndarray, connectivity: int) -> None:
    regions, n_split = split_disconnected(labels, connectivity)
    assert np.array_equal(regions > 0, labels > 0)
    counts = [cv2.connectedComponents((labels == value).astype(np.uint8), connectivity=connectivity)[0] - 1
              for value in ids(labels)]
    assert n_split == sum(count > 1 for count in counts)
    # as many regions inside each id as it has connected parts, and no more in all: no region spans two ids
    assert [len(ids(regions[labels == value])) for value in ids(labels)] == counts
    assert ids(regions) == list(range(1, sum(counts) + 1))


# --- real data --------------------------------------------------------------------------------------

def test_glas_scores_on_a_real_gland_image_match_the_official_definitions(shared_data) -> None:
    target = cv2.imread(str(shared_data / "glas" / "test" / "masks_instance" / "001.png"), cv2.IMREAD_UNCHANGED)
    assert target.ndim == 2 and len(ids(target)) > 5
    pred = cv2.erode(np.roll(target, (5, -7), axis=(0, 1)), np.ones((9, 9), np.uint8)).astype(np.uint16)
    pred[10:14, 10:14], pred[300:303, 700:704] = 500, 501  # specks that overlap nothing
    assert object_dice(pred, target) == pytest.approx(reference_object_dice(pred, target), rel=1e-12)
    assert object_hausdorff(pred, target) == pytest.approx(reference_object_hausdorff(pred, target), rel=1e-6)
    assert aggregated_jaccard(pred, target) == pytest.approx(reference_aji(pred, target), rel=1e-12)


# --- bad input --------------------------------------------------------------------------------------

def test_bad_label_images_raise_one_line_errors() -> None:
    labels = np.zeros((3, 4), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"prediction \(3, 4\) and target \(4, 3\) label images differ in shape"):
        object_f1(labels, labels.T)
    with pytest.raises(ValueError, match=r"target labels contain the negative id -2; use 0 for background"):
        panoptic_quality(labels, np.full((3, 4), -2))
    with pytest.raises(ValueError, match=r"prediction labels must be an integer array .* got float32; label a"):
        aggregated_jaccard(labels.astype(np.float32), labels)
    with pytest.raises(ValueError, match=r"must be an integer array .* got bool"):
        object_dice(labels, labels > 0)
    with pytest.raises(ValueError, match=r"prediction labels must be an \(H, W\) image, got shape \(2, 3, 4\)"):
        object_hausdorff(np.zeros((2, 3, 4), dtype=np.uint8), np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"target labels contain the id 4294967296, above 2\*\*32 - 1"):
        match_instances(labels.astype(np.int64), np.full((3, 4), 2**32))
    with pytest.raises(ValueError, match=r"iou_threshold 0.3 must be in \[0.5, 1\)"):
        object_f1(labels, labels, iou_threshold=0.3)
    with pytest.raises(ValueError, match=r"connectivity 6 must be 4 or 8"):
        split_disconnected(labels, connectivity=6)


def test_glas_detection_counts_a_prediction_covering_more_than_half_of_its_target():
    target = np.zeros((10, 20), np.int32)
    target[:, :10], target[:, 10:] = 1, 2
    pred = np.zeros_like(target)
    pred[:, :6] = 5  # 60 % of target 1: a true positive
    pred[:, 10:14] = 7  # 40 % of target 2: a false positive, and target 2 is missed
    assert glas_detection(pred, target) == (1, 1, 1)
    halves = np.where(target == 1, np.where(np.arange(20) < 5, 1, 2), 0)  # target 1 split in two halves of 50 %
    assert glas_detection(halves, target) == (0, 2, 2)
    assert glas_detection(np.zeros_like(target), target) == (0, 0, 2)
    assert glas_detection(target, np.zeros_like(target)) == (0, 2, 0)
