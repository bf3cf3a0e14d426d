"""Tiling: spans cover the image with the requested overlap and little waste; blending is seamless."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segmenter.errors import CysegError
from segmenter.tiling import _weights, predict_tiled, tile_spans


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 5000), tile=st.integers(32, 1024), overlap=st.integers(0, 31),
       multiple=st.sampled_from([1, 8, 16]))
def test_spans_cover_with_overlap(length, tile, overlap, multiple):
    spans = tile_spans(length, tile, overlap, multiple)
    assert spans[0][0] == 0
    assert spans[-1][0] + spans[-1][1] == length
    for (s0, z0), (s1, _) in itertools.pairwise(spans):
        assert s0 < s1
        assert s0 + z0 - s1 >= overlap  # at least the requested overlap
    assert all(0 < size <= max(tile, 1) for _, size in spans)
    if len(spans) > 1:
        n_min = -(-(length - overlap) // (tile - overlap))
        assert len(spans) == n_min  # the fewest tiles


def test_spans_waste_little():
    spans = tile_spans(2048, 512, 32, 16)
    assert sum(size for _, size in spans) == 2048 + 4 * 32  # only the overlaps are computed twice
    assert all(size % 16 == 0 for _, size in spans)


def test_bad_overlap():
    with pytest.raises(CysegError, match="must be larger than the overlap"):
        tile_spans(1000, 64, 64)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 3000), tile=st.integers(32, 512), overlap=st.integers(0, 31))
def test_blending_weights_sum_to_one_and_keep_the_ramps(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    weights = _weights(spans, torch.device("cpu"))
    total = torch.zeros(length)
    for (start, size), w in zip(spans, weights, strict=True):
        assert w.shape == (size,) and bool((w > 0).all())
        total[start:start + size] += w
    torch.testing.assert_close(total, torch.ones(length))
    (s0, z0), (s1, _) = spans[0], spans[-1 if len(spans) == 1 else 1]
    if len(spans) > 1 and s0 + z0 - s1 >= 8:  # a tile's edge facing a neighbour weighs far less than its middle
        assert weights[0][-1] < 0.05 and weights[1][0] < 0.05 and weights[0][s1 - s0] > 0.95


def test_blending_a_constant_gives_the_constant():
    image = torch.zeros((3, 700, 900), dtype=torch.uint8)
    out = predict_tiled(lambda b: torch.full((b.shape[0], 2, *b.shape[2:]), 0.25), image, 2, tile=256, overlap=48,
                        batch=4)
    torch.testing.assert_close(out, torch.full((2, 700, 900), 0.25))


def _smooth_forward(batch: torch.Tensor) -> torch.Tensor:
    """A translation-equivariant 'model' whose output depends on context (a 9x9 mean) and on
    the tile border (zero padding), like a CNN."""
    x = batch.float().mean(dim=1, keepdim=True) / 255
    return torch.sigmoid(torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4) * 4 - 2)


def test_blend_equals_untiled_away_from_padding_effects():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 255, (3, 300, 410), dtype=np.uint8))
    full = _smooth_forward(image[None])[0]
    tiled = predict_tiled(_smooth_forward, image, 1, tile=128, overlap=32, batch=3)
    assert tiled.shape == full.shape
    # zero padding only disturbs 4 px at each tile border; the ramps give those pixels little weight
    assert (tiled - full).abs().max() < 2e-3
    assert (tiled - full).abs().mean() < 1e-4


def test_single_tile_is_the_plain_forward():
    image = torch.randint(0, 255, (3, 50, 60), dtype=torch.uint8)
    assert torch.equal(predict_tiled(_smooth_forward, image, 1, 512, 32, 4), _smooth_forward(image[None])[0])


def test_box_weights_rise_from_every_border_over_the_margin():
    from segmenter.tiling import box_weights

    w = box_weights(40, 60, 10, torch.device("cpu"))
    assert w.shape == (40, 60)
    assert w[20, 30] == 1 and w[10:30, 10:50].min() == 1
    assert w[0, 30] < 0.01 and w[20, 0] < 0.01 and w[39, 59] < 1e-4 and w.min() > 0
    assert torch.all(w[:20, 30].diff() >= 0)  # rises towards the middle


@pytest.mark.parametrize("side", [40, 150])  # one tile, several
def test_prediction_added_into_a_canvas_view_equals_the_pasted_one(side):
    """`into`: the tiles accumulate straight into a view of a larger canvas (the slide engine's
    large boxes); unscaled into zeros it is bit-identical to pasting the result, scaled it is the
    result times the scale."""
    torch.manual_seed(0)
    image = torch.rand(3, side, side + 7)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(conv(x))

    with torch.no_grad():
        alone = predict_tiled(forward, image, 2, 64, 16, 4)
        canvas = torch.zeros(2, side + 10, side + 20)
        view = canvas[:, 5:5 + side, 3:3 + side + 7]
        assert predict_tiled(forward, image, 2, 64, 16, 4, into=view).data_ptr() == view.data_ptr()
        assert torch.equal(view, alone)
        view.zero_()
        assert not canvas.any()  # nothing written outside the view
        scale = torch.rand(side, side + 7)
        scaled = torch.ones(2, side, side + 7)
        predict_tiled(forward, image, 2, 64, 16, 4, into=scaled, scale=scale)
        torch.testing.assert_close(scaled, 1 + alone * scale)


@pytest.mark.parametrize("resolution", [1.0, 0.5])
def test_segmenter_predict_into_matches_predict(resolution):
    """`Segmenter.predict(into=, scale=)` adds what `predict` returns, at the image's resolution or not."""
    from unet import UNetSegmenter

    seg = UNetSegmenter({"depth": 2, "n": 4, "resolution": resolution}, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    tiling = {"tile": 64, "overlap": 16, "batch": 2}
    alone = seg.predict(image, **tiling)
    into = torch.zeros_like(alone)
    seg.predict(image, **tiling, into=into)
    assert torch.equal(into, alone)
    scale = torch.rand(96, 120)
    into = torch.zeros_like(alone)
    seg.predict(image, **tiling, into=into, scale=scale)
    torch.testing.assert_close(into, alone * scale)


def test_segmenter_predict_tiles_in_multiples_asked_for():
    """`multiple=`: every forward pass of a tiled image has sides that are multiples of it (the slide
    engine's shared shapes), and the result still covers the image."""
    from unet import UNetSegmenter

    seg = UNetSegmenter({"depth": 2, "n": 4}, device="cpu")
    shapes: list[tuple[int, int]] = []
    seg.model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[2:])))
    image = np.random.default_rng(0).integers(0, 255, (200, 330, 3), dtype=np.uint8)
    probs = seg.predict(image, tile=128, overlap=16, batch=1, multiple=32)
    assert probs.shape[1:] == (200, 330)
    assert shapes and all(h % 32 == 0 and w % 32 == 0 and max(h, w) <= 128 for h, w in shapes)
