"""The threshold calibration's guard against a model collapsed towards background: probabilities
all below the 0.1..0.9 sweep still rank the pixels, so a lower threshold is chosen; a model that
predicts nothing anywhere is refused. Real IHC crops (conftest.py) with a stand-in probability map."""
from __future__ import annotations

import pytest
import torch

from segmenter.errors import CysegError
from segmenter.evaluation import LOW_SWEEP, calibrate_threshold, collapsed_classes, mean_scores
from unet import UNetSegmenter


def with_probabilities(value: float) -> UNetSegmenter:
    """A small U-Net whose every prediction is the constant `value`."""
    seg = UNetSegmenter({"depth": 2, "n": 4}, device="cpu")
    seg.predict = lambda image, *args, **kwargs: torch.full((1, *image.shape[:2]), value)  # type: ignore[method-assign]
    return seg


def test_collapsed_classes_needs_annotated_pixels_and_no_prediction():
    row = {"threshold": 0.5, "tp": 0, "fp": 0, "fn": 10}
    assert collapsed_classes([row]) == [None]
    assert collapsed_classes([{**row, "fn": 0}]) == []  # nothing annotated: an empty prediction is right
    assert collapsed_classes([row, {**row, "threshold": 0.1, "fp": 3}]) == []  # one threshold predicts something
    named = [{**row, "class": "cell"}, {**row, "class": "nucleus", "tp": 4}]
    assert collapsed_classes(named) == ["cell"]


def test_a_few_specks_where_much_is_annotated_count_as_collapsed():
    """Under NEAR_EMPTY of the annotated pixels at every threshold, pooled over the images."""
    image = {"threshold": 0.5, "tp": 3, "fp": 1, "fn": 97}  # 4 predicted, 100 annotated
    assert collapsed_classes([image, {**image, "tp": 0, "fp": 0, "fn": 100}]) == [None]  # 4 of 200
    assert collapsed_classes([image, {**image, "threshold": 0.1, "tp": 10, "fn": 90}]) == []  # 11 % at 0.1
    assert collapsed_classes([image, {**image, "tp": 20, "fn": 80}]) == []  # 24 of 200 at 0.5


def test_a_model_below_the_sweep_gets_a_lower_threshold(ihc_dataset):
    seg = with_probabilities(0.03)
    info = calibrate_threshold(seg, ihc_dataset.val, "validation images")
    assert info["collapse_guard"] == [None]
    assert seg.threshold in LOW_SWEEP and seg.threshold < 0.03
    assert mean_scores(seg, ihc_dataset.val)["iou"] > 0


def test_a_healthy_model_is_calibrated_on_the_sweep_alone(ihc_dataset):
    seg = with_probabilities(0.6)
    info = calibrate_threshold(seg, ihc_dataset.val, "validation images")
    assert "collapse_guard" not in info
    assert seg.threshold == 0.5  # every threshold below 0.6 ties; the one nearest 0.5 wins


def test_a_model_that_predicts_nothing_is_refused(ihc_dataset):
    with pytest.raises(CysegError, match=r"^training collapsed: the model predicts \(next to\) no foreground on the "
                                         r"validation images at any threshold down to 0\.001.*another --seed"):
        calibrate_threshold(with_probabilities(0.0), ihc_dataset.val, "validation images")


def test_a_fixed_threshold_above_every_probability_is_replaced(ihc_dataset):
    """A model trained with a fixed threshold (`cyseg improve`, `train --threshold 0.5`) that predicts
    nothing at it is calibrated instead; one that predicts something keeps its threshold."""
    from types import SimpleNamespace

    from segmenter.evaluation import guard_fixed_threshold
    from segmenter.io.dataset import open_dataset
    from segmenter.training import _guard_threshold

    healthy = with_probabilities(0.6)
    assert guard_fixed_threshold(healthy, ihc_dataset.val, "validation images") is None
    assert healthy.threshold == 0.5

    seg = with_probabilities(0.3)
    data = SimpleNamespace(val=[open_dataset(ihc_dataset.val)], datasets=[])
    predictions: dict = {}
    _guard_threshold(seg, data, 0, predictions)
    assert seg.threshold < 0.3
    assert seg.training_info["threshold"]["fixed_threshold_collapsed"] == [None]
    assert len(predictions) == len(data.val[0].items)  # kept for the instance separation
