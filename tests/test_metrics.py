"""Dice and Jaccard (numpy, torch hard and torch soft) against the set definitions, on empty masks,
with class weights, and with gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metrics import (
    dice,
    dice_loss,
    dice_score,
    jaccard,
    jaccard_score,
    mean_std,
    per_image_dice,
    per_image_jaccard,
    per_image_soft_dice,
    per_image_soft_jaccard,
    soft_dice,
    soft_jaccard,
)

FAST = settings(max_examples=60, deadline=None)

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def mask_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two random boolean (H, W) masks of the same small shape."""
    shape = draw(shapes)
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


@st.composite
def mask_batch(draw: st.DrawFn, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two random boolean (N, H, W) stacks, or (N, C, H, W) when `channels` is given."""
    n = draw(st.integers(1, 4))
    head = (n,) if channels is None else (n, channels)
    shape = head + draw(shapes)
    return draw(arrays(np.bool_, shape)), draw(arrays(np.bool_, shape))


def pixel_set(mask: np.ndarray) -> set[tuple[int, int]]:
    """Coordinates of the foreground pixels."""
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(mask), strict=True)}


def set_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice from the set definition 2|A∩B|/(|A|+|B|), 1 for two empty sets."""
    sa, sb = pixel_set(a), pixel_set(b)
    return 1.0 if not sa and not sb else 2 * len(sa & sb) / (len(sa) + len(sb))


def set_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard from the set definition |A∩B|/|A∪B|, 1 for two empty sets."""
    sa, sb = pixel_set(a), pixel_set(b)
    return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)


# --- hard metrics -------------------------------------------------------------------------------

@FAST
@given(mask_pair())
def test_numpy_metrics_match_set_definitions(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert dice(a, b) == pytest.approx(set_dice(a, b), rel=1e-12)
    assert jaccard(a, b) == pytest.approx(set_jaccard(a, b), rel=1e-12)


@FAST
@given(mask_pair())
def test_hard_metrics_are_symmetric_and_satisfy_dice_jaccard_identity(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    d, j = dice(a, b), jaccard(a, b)
    assert d == dice(b, a) and j == jaccard(b, a)
    assert d == pytest.approx(2 * j / (1 + j), rel=1e-12)
    assert 0.0 <= j <= d <= 1.0


@FAST
@given(mask_batch())
def test_torch_and_numpy_hard_metrics_agree_per_image(batch: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = batch
    expected_dice = np.array([set_dice(x, y) for x, y in zip(a, b, strict=True)])
    expected_jaccard = np.array([set_jaccard(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(per_image_dice(a, b), expected_dice, rtol=1e-12)
    np.testing.assert_allclose(per_image_jaccard(a, b), expected_jaccard, rtol=1e-12)
    torch_dice = dice_score(torch.from_numpy(a), torch.from_numpy(b))
    torch_jaccard = jaccard_score(torch.from_numpy(a), torch.from_numpy(b))
    assert torch_dice.dtype == torch.float64 and torch_dice.shape == (len(a),)
    np.testing.assert_allclose(torch_dice.numpy(), expected_dice, rtol=1e-12)
    np.testing.assert_allclose(torch_jaccard.numpy(), expected_jaccard, rtol=1e-12)


def test_both_empty_scores_one_and_one_empty_scores_zero() -> None:
    empty = np.zeros((4, 5), dtype=np.uint8)
    full = np.ones((4, 5), dtype=np.uint8)
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and jaccard(full, empty) == 0.0
    stack = torch.from_numpy(np.stack([empty, full]))
    zeros = torch.zeros_like(stack)
    assert dice_score(zeros, zeros).tolist() == [1.0, 1.0]
    assert jaccard_score(stack, zeros).tolist() == [1.0, 0.0]
    assert dice_score(stack, stack).tolist() == [1.0, 1.0]


def test_nonzero_values_of_any_dtype_are_foreground() -> None:
    pred = np.array([[0, 255], [0, 255]], dtype=np.uint8)
    target = np.array([[0.0, 0.5], [-1.0, 0.0]], dtype=np.float32)
    assert dice(pred, target) == pytest.approx(2 * 1 / (2 + 2))
    assert jaccard(pred, target) == pytest.approx(1 / 3)
    assert dice_score(torch.from_numpy(pred), torch.from_numpy(target)).tolist() == [pytest.approx(0.5)]


def test_single_torch_mask_gives_a_one_element_vector() -> None:
    mask = torch.tensor([[True, False], [False, False]])
    assert dice_score(mask, mask).shape == (1,)
    assert jaccard_score(mask, ~mask).tolist() == [0.0]


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"prediction \(2, 3\) and target \(3, 3\) must both be \(H, W\) masks"):
        dice(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"must both be \(N, H, W\) masks"):
        per_image_jaccard(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"prediction \(1, 2, 3\) and target \(2, 3\)"):
        dice_score(torch.zeros(1, 2, 3), torch.zeros(2, 3))


def test_mean_std_is_population_and_nan_free() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std(np.array([0.2, 0.4, 0.9]))
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.4, 0.9]))
    with pytest.raises(ValueError, match="mean_std got no values"):
        mean_std([])


# --- soft metrics -------------------------------------------------------------------------------

@FAST
@given(mask_batch(channels=1))
def test_soft_metrics_on_binary_inputs_without_smoothing_equal_hard_ones(batch: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = batch
    probs, target = torch.from_numpy(a).double(), torch.from_numpy(b)
    hard_dice = dice_score(torch.from_numpy(a[:, 0]), torch.from_numpy(b[:, 0]))
    hard_jaccard = jaccard_score(torch.from_numpy(a[:, 0]), torch.from_numpy(b[:, 0]))
    torch.testing.assert_close(per_image_soft_dice(probs, target, smooth=0), hard_dice)
    torch.testing.assert_close(per_image_soft_jaccard(probs, target, smooth=0), hard_jaccard)
    torch.testing.assert_close(per_image_soft_dice(probs, target, smooth=1e-9), hard_dice, atol=1e-8, rtol=0)


@FAST
@given(mask_batch(channels=2), st.integers(0, 2**32 - 1))
def test_batch_mean_is_mean_of_per_image_scores(batch: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    _, b = batch
    probs = torch.from_numpy(np.random.default_rng(seed).random(b.shape))
    target = torch.from_numpy(b).double()
    torch.testing.assert_close(soft_dice(probs, target), per_image_soft_dice(probs, target).mean())
    torch.testing.assert_close(soft_jaccard(probs, target), per_image_soft_jaccard(probs, target).mean())
    torch.testing.assert_close(dice_loss(probs, target), 1 - soft_dice(probs, target))
    scores = per_image_soft_dice(probs, target)
    assert scores.shape == (len(b),) and bool(((scores >= 0) & (scores <= 1)).all())


def test_soft_dice_matches_hand_computed_value() -> None:
    probs = torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # Σpt = 1.5, Σp = 1.5, Σt = 2
    torch.testing.assert_close(soft_dice(probs, target), torch.tensor((3.0 + 1) / (3.5 + 1)))
    torch.testing.assert_close(soft_jaccard(probs, target), torch.tensor((1.5 + 1) / (2.0 + 1)))


def test_class_weight_on_one_class_ignores_the_other() -> None:
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((3, 2, 5, 5)))
    target = torch.from_numpy(rng.random((3, 2, 5, 5)) > 0.5).double()
    other = probs.clone()
    other[:, 1] = 1 - other[:, 1]
    first_only = per_image_soft_dice(probs, target, weights=[1, 0])
    torch.testing.assert_close(first_only, per_image_soft_dice(probs[:, :1], target[:, :1]))
    torch.testing.assert_close(first_only, per_image_soft_dice(other, target, weights=torch.tensor([3.0, 0.0])))
    torch.testing.assert_close(per_image_soft_jaccard(probs, target, weights=[0, 2]),
                               per_image_soft_jaccard(probs[:, 1:], target[:, 1:]))
    torch.testing.assert_close(soft_dice(probs, target, weights=[2, 2]), soft_dice(probs, target))


@pytest.mark.parametrize("weights, message", [
    ([0, 0], r"class weights \[0.0, 0.0\] are all zero; give at least one positive weight"),
    ([1, -1], r"class weights \[1.0, -1.0\] contain a negative or non-finite value; use finite weights >= 0"),
    ([1, float("nan")], r"contain a negative or non-finite value"),
    ([1], r"class weights \[1.0\] do not match the 2 classes; give one weight per class"),
    ([[1, 1]], r"do not match the 2 classes"),
    (["a", "b"], r"class weights \['a', 'b'\] are not numbers"),
])
def test_bad_class_weights_raise(weights: object, message: str) -> None:
    probs = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match=message):
        soft_dice(probs, probs, weights=weights)


def test_bad_smooth_and_shapes_raise() -> None:
    probs = torch.rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"smooth -1 must be a finite number >= 0; use e.g. smooth=1.0"):
        soft_jaccard(probs, probs, smooth=-1)
    with pytest.raises(ValueError, match=r"probabilities \(1, 3, 3\) and target \(1, 3, 3\) must both be"):
        dice_loss(probs[0], probs[0])


def test_gradient_flows_and_is_finite_on_empty_inputs() -> None:
    for smooth in (1.0, 1e-3):
        probs = torch.zeros(2, 2, 4, 4, requires_grad=True)
        loss = dice_loss(probs, torch.zeros(2, 2, 4, 4), smooth=smooth) + 1 - soft_jaccard(
            probs, torch.zeros(2, 2, 4, 4), smooth=smooth)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(probs.grad).all() and bool((probs.grad != 0).all())


def test_gradient_is_finite_when_both_empty_without_smoothing() -> None:
    probs = torch.zeros(1, 1, 3, 3, requires_grad=True)
    score = soft_dice(probs, torch.zeros(1, 1, 3, 3), smooth=0)
    score.backward()
    assert score.item() == 1.0 and torch.isfinite(probs.grad).all()


def test_soft_metrics_pass_gradcheck() -> None:
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(rng.uniform(0.05, 0.95, (2, 2, 3, 3))).requires_grad_()
    target = torch.from_numpy(rng.random((2, 2, 3, 3)) > 0.5).double()
    assert torch.autograd.gradcheck(lambda p: soft_dice(p, target, weights=[1, 3]), (probs,))
    assert torch.autograd.gradcheck(lambda p: soft_jaccard(p, target), (probs,))
    loss = dice_loss(probs, target)
    loss.backward()
    assert bool((probs.grad != 0).any())
