"""Post-processing ops: hand-computed cases, numpy/OpenCV and torch giving identical masks, and the
JSON-able chains."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from transforms import (
    Compose,
    ErodeDilate,
    Normalize,
    Smoothing,
    Threshold,
    TorchCompose,
    TorchErodeDilate,
    TorchNormalize,
    TorchSmoothing,
    TorchThreshold,
    build_cpu,
    build_on,
    build_torch,
    default_chain,
    idi_chain,
    validate_chain,
    with_threshold,
    without_threshold,
)

FAST = settings(max_examples=80, deadline=None)
OP_PAIRS = [(Normalize, TorchNormalize), (Smoothing, TorchSmoothing), (ErodeDilate, TorchErodeDilate),
            (Threshold, TorchThreshold)]


def both(cpu_op: object, torch_op: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Results of the cpu op on the (H, W) or (C, H, W) map `x` and of the torch op on it as a batch."""
    batch = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(1, -1, *np.shape(x)[-2:])
    return cpu_op(x), torch_op(batch).numpy().reshape(np.shape(x))


def run_cpu(op: object, batch: np.ndarray) -> np.ndarray:
    """Apply a cpu op to every (C, H, W) item of an (N, C, H, W) batch."""
    return np.stack([op(item) for item in batch])


@st.composite
def grid_maps(draw: st.DrawFn) -> np.ndarray:
    """(N, C, H, W) float32 maps on a 2^-24 grid in [0, 1] (as float32 random numbers are), where
    OpenCV's window sums are exact; coarse and constant maps put many values exactly on thresholds."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 37)))
    kind = draw(st.sampled_from(["uniform", "coarse", "constant", "specks"]))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random(shape, dtype=np.float32)
    if kind == "coarse":
        x = np.round(x * 4) / 4
    elif kind == "constant":
        x = np.full(shape, draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])))
    elif kind == "specks":
        x = (x > 0.85).astype(np.float32)
    return x.astype(np.float32)


thresholds = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0, 1))
kernel_sizes = st.integers(1, 45)


# --- hand-computed cases ------------------------------------------------------------------------

def test_normalize_z_scores_each_map_and_zeroes_constant_maps() -> None:
    x = np.array([[[1.0, 3.0]], [[10.0, 10.0]]], dtype=np.float32)
    for out in both(Normalize(), TorchNormalize(), x):
        np.testing.assert_array_equal(out, [[[-1.0, 1.0]], [[0.0, 0.0]]])
        assert out.dtype == np.float32
    for out in both(Normalize(), TorchNormalize(), np.full((5, 4), 0.3, dtype=np.float32)):
        np.testing.assert_array_equal(out, np.zeros((5, 4)))


def test_smoothing_reflects_borders_like_opencv() -> None:
    x = np.zeros((3, 3), dtype=np.float32)
    x[1, 1] = 9
    expected = [[4, 2, 4], [2, 1, 2], [4, 2, 4]]
    for out in both(Smoothing(3), TorchSmoothing(3), x):
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_even_smoothing_window_covers_the_left_neighbour() -> None:
    x = np.array([[0.0, 4.0, 8.0]], dtype=np.float32)
    for out in both(Smoothing(2), TorchSmoothing(2), x):
        np.testing.assert_allclose(out, [[2.0, 2.0, 6.0]], rtol=1e-6)


def test_even_erode_dilate_uses_opencv_anchor() -> None:
    x = np.array([[5.0, 1.0, 7.0, 3.0]], dtype=np.float32)
    # erosion over [x-1, x] gives [5, 1, 1, 3]; dilation over [x-1, x] gives [5, 5, 1, 3]
    for out in both(ErodeDilate(2, 1), TorchErodeDilate(2, 1), x):
        np.testing.assert_array_equal(out, [[5.0, 5.0, 1.0, 3.0]])


def test_erode_dilate_removes_small_blobs_and_keeps_large_squares() -> None:
    x = np.zeros((14, 14), dtype=np.float32)
    x[2, 9] = 1
    x[10:12, 1:3] = 1
    x[5:10, 5:10] = 1
    x[0:3, 0:3] = 1
    expected = np.zeros_like(x)
    expected[5:10, 5:10] = 1
    expected[0:3, 0:3] = 1
    for out in both(ErodeDilate(3, 1), TorchErodeDilate(3, 1), x):
        np.testing.assert_array_equal(out, expected)
    for out in both(ErodeDilate(3, 2), TorchErodeDilate(3, 2), x):
        np.testing.assert_array_equal(out, expected)


def test_threshold_is_strictly_greater() -> None:
    x = np.array([[0.0, 0.2, 0.5, 0.7, 1.0]], dtype=np.float32)
    for t, expected in [(0.5, [[0, 0, 0, 1, 1]]), (0.0, [[0, 1, 1, 1, 1]]), (1.0, [[0, 0, 0, 0, 0]])]:
        for out in both(Threshold(t), TorchThreshold(t), x):
            np.testing.assert_array_equal(out, expected)
            assert out.dtype == np.uint8


@pytest.mark.parametrize("cpu_op, torch_op", [
    (Smoothing(1), TorchSmoothing(1)),
    (ErodeDilate(1, 3), TorchErodeDilate(1, 3)),
    (ErodeDilate(5, 0), TorchErodeDilate(5, 0)),
])
def test_unit_kernel_and_zero_iterations_are_the_identity(cpu_op: object, torch_op: object) -> None:
    x = np.random.default_rng(0).random((2, 6, 5), dtype=np.float32)
    for out in both(cpu_op, torch_op, x):
        np.testing.assert_array_equal(out, x)


# --- numpy/OpenCV and torch agree ---------------------------------------------------------------

@FAST
@given(grid_maps(), st.booleans(), kernel_sizes, st.integers(0, 3), kernel_sizes, thresholds)
def test_cpu_and_torch_chains_give_identical_masks(x: np.ndarray, normalize: bool, erode_k: int, iterations: int,
                                                   smoothing_k: int, t: float) -> None:
    make = idi_chain if normalize else default_chain
    spec = make(threshold=t, erode_k=erode_k, erode_iterations=iterations, smoothing_k=smoothing_k)
    cpu_maps = run_cpu(build_cpu(without_threshold(spec)), x)
    torch_maps = build_torch(without_threshold(spec))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_maps, cpu_maps, atol=1e-5, rtol=0)
    cpu_masks = run_cpu(build_cpu(spec), x)
    torch_masks = build_torch(spec)(torch.from_numpy(x))
    assert torch_masks.dtype == torch.uint8 and cpu_masks.dtype == np.uint8
    np.testing.assert_array_equal(torch_masks.numpy(), cpu_masks)


@FAST
@given(grid_maps(), st.booleans(), kernel_sizes, st.integers(0, 3), thresholds)
def test_cpu_device_chain_runs_opencv_with_the_torch_results(x: np.ndarray, normalize: bool, k: int, iterations: int,
                                                             t: float) -> None:
    spec = (idi_chain if normalize else default_chain)(threshold=t, erode_k=k, erode_iterations=iterations)
    batch = torch.from_numpy(x)
    for chain in (spec, without_threshold(spec)):
        on_cpu, reference = build_on(torch.device("cpu"), chain)(batch), build_torch(chain)(batch)
        assert on_cpu.shape == reference.shape and on_cpu.dtype == reference.dtype
        np.testing.assert_allclose(on_cpu.numpy(), reference.numpy(), atol=1e-5, rtol=0)
    assert build_on(torch.device("meta"), spec).__class__ is TorchCompose


@FAST
@given(grid_maps(), st.sampled_from(OP_PAIRS), kernel_sizes, st.integers(0, 3), thresholds)
def test_each_op_is_identical_on_grid_maps(x: np.ndarray, pair: tuple[type, type], k: int, iterations: int,
                                           t: float) -> None:
    cpu_cls, torch_cls = pair
    args = {Normalize: (), Smoothing: (k,), ErodeDilate: (k, iterations), Threshold: (t,)}[cpu_cls]
    np.testing.assert_array_equal(torch_cls(*args)(torch.from_numpy(x)).numpy(), run_cpu(cpu_cls(*args), x))


@FAST
@given(st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.floats(0, 1, width=32))), st.integers(1, 15),
    st.integers(0, 2), st.integers(1, 15), thresholds)
def test_any_float_map_agrees_away_from_the_threshold(x: np.ndarray, erode_k: int, iterations: int,
                                                      smoothing_k: int, t: float) -> None:
    # With values more than 2^29 apart in one window OpenCV's running sums are inexact in the last
    # float32 bit, so masks can only differ where the smoothed map is within rounding of t.
    spec = idi_chain(t, erode_k, iterations, smoothing_k)
    cpu_maps = build_cpu(without_threshold(spec))(x)
    torch_maps = build_torch(without_threshold(spec))(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(torch_maps, cpu_maps, atol=1e-5, rtol=0)
    clear = np.abs(cpu_maps - t) > 1e-5
    torch_masks = build_torch(spec)(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_array_equal(torch_masks[clear], build_cpu(spec)(x)[clear])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_masks() -> None:
    x = np.random.default_rng(3).random((2, 2, 64, 48), dtype=np.float32)
    for spec in (default_chain(0.5, 4, 2, 5), idi_chain(0.25)):
        on_device = build_torch(spec)(torch.from_numpy(x).cuda())
        assert on_device.device.type == "cuda"
        np.testing.assert_array_equal(on_device.cpu().numpy(), run_cpu(build_cpu(spec), x))


# --- chains -------------------------------------------------------------------------------------

def test_default_and_idi_chains_follow_the_method_order() -> None:
    assert default_chain() == [{"op": "erode_dilate", "k": 3, "iterations": 1}, {"op": "smoothing", "k": 3},
                               {"op": "threshold", "t": 0.5}]
    assert idi_chain(0.3, 5, 2, 7) == [{"op": "normalize"}, {"op": "erode_dilate", "k": 5, "iterations": 2},
                                       {"op": "smoothing", "k": 7}, {"op": "threshold", "t": 0.3}]


def test_chain_survives_a_json_round_trip() -> None:
    spec = idi_chain(0.4, 4, 2, 5)
    loaded = json.loads(json.dumps(spec))
    assert validate_chain(loaded) == spec
    x = np.random.default_rng(1).random((1, 2, 20, 17), dtype=np.float32)
    np.testing.assert_array_equal(build_cpu(loaded)(x[0]), build_cpu(spec)(x[0]))
    np.testing.assert_array_equal(build_torch(loaded)(torch.from_numpy(x)).numpy(), build_cpu(spec)(x[0])[None])


def test_builders_make_the_listed_ops_without_changing_the_spec() -> None:
    spec = default_chain(0.6, 5, 2, 3)
    copy = json.loads(json.dumps(spec))
    assert build_cpu(spec) == Compose([ErodeDilate(5, 2), Smoothing(3), Threshold(0.6)])
    assert build_torch(spec) == TorchCompose([TorchErodeDilate(5, 2), TorchSmoothing(3), TorchThreshold(0.6)])
    assert spec == copy


def test_with_and_without_threshold() -> None:
    spec = default_chain(0.5)
    assert with_threshold(spec, 0.7)[-1] == {"op": "threshold", "t": 0.7}
    assert with_threshold(spec, 1)[:-1] == spec[:-1] and spec[-1]["t"] == 0.5
    assert without_threshold(spec) == spec[:-1]
    assert with_threshold(without_threshold(spec), 0.2) == default_chain(0.2)
    with pytest.raises(ValueError, match=r"threshold 1.5 is outside \[0, 1\]; choose a value in \[0, 1\]"):
        with_threshold(spec, 1.5)


@pytest.mark.parametrize("spec, message", [
    ([{"op": "blur", "k": 3}],
     r"unknown post-processing op 'blur'; use one of normalize, smoothing, erode_dilate, threshold"),
    ([{"op": ["smoothing"]}], r"unknown post-processing op \['smoothing'\]"),
    ([{"op": "smoothing"}], r"post-processing op 'smoothing' takes parameters \['k'\], got \[\]; give exactly those"),
    ([{"op": "normalize", "k": 3}], r"op 'normalize' takes parameters \[\], got \['k'\]"),
    ([{"op": "smoothing", "k": 0}], r"smoothing: kernel size k=0 is not an integer >= 1; use e.g. k=3"),
    ([{"op": "erode_dilate", "k": 3, "iterations": -1}],
     r"erode_dilate: iterations=-1 is not an integer >= 0; use e.g. iterations=1"),
    ([{"op": "erode_dilate", "k": 2.5, "iterations": 1}], r"erode_dilate: kernel size k=2.5 is not an integer"),
    ([{"op": "threshold", "t": 1.5}], r"threshold 1.5 is outside \[0, 1\]; choose a value in \[0, 1\] such as 0.5"),
    ([{"op": "threshold", "t": "high"}], r"threshold 'high' is not a number"),
    ([{"op": "threshold", "t": 0.5}, {"op": "smoothing", "k": 3}], r"'threshold' must be the last step"),
    (["smoothing"], r"post-processing step 0 \('smoothing'\) is not a dict with an 'op' key"),
    ({"op": "smoothing", "k": 3}, r"is not a list of steps"),
])
def test_bad_chains_raise(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_chain(spec)


def test_bad_op_parameters_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"threshold -0.1 is outside \[0, 1\]"):
        TorchThreshold(-0.1)
    with pytest.raises(ValueError, match=r"smoothing: kernel size k=True is not an integer >= 1"):
        TorchSmoothing(True)
    with pytest.raises(ValueError, match=r"probability map of shape \(1, 1, 2, 2\) is not a non-empty \(H, W\)"):
        Smoothing(3)(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"probability maps \(2, 2\) are not a non-empty \(N, C, H, W\) tensor"):
        TorchSmoothing(3)(torch.zeros(2, 2))
