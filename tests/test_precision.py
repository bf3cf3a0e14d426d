"""Reduced precision (segmenter.precision): float16 on CUDA, bfloat16 on CPUs that compute it
natively, float32 elsewhere or with --no-amp; bfloat16 masks must match float32's on real images."""
from __future__ import annotations

import pytest
import torch
from conftest import invoke

from cyseg.models import resolve_model
from segmenter.precision import autocast, cpu_has_bf16, precision_name, reduced_dtype
from unet import load_segmenter

CPU = torch.device("cpu")
NO_BF16 = "this CPU has no native bfloat16 (AVX512-BF16 or AMX): cyseg computes in float32 here"


def test_precision_follows_the_hardware_and_the_switch():
    assert reduced_dtype(torch.device("cuda")) is torch.float16
    assert reduced_dtype(CPU) is (torch.bfloat16 if cpu_has_bf16() else None)
    assert precision_name(torch.device("cuda")) == "float16"
    assert precision_name(CPU) == ("bfloat16" if cpu_has_bf16() else "float32")
    assert precision_name(CPU, enabled=False) == "float32"
    with autocast(CPU, enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU):
        assert torch.is_autocast_enabled("cpu") == cpu_has_bf16()


@pytest.mark.skipif(not cpu_has_bf16(), reason=NO_BF16)
def test_bfloat16_masks_match_float32_on_a_real_image(ihc_image):
    seg = load_segmenter(resolve_model("default"), device="cpu")
    image = ihc_image[:320, :384]
    fast, exact = seg.predict(image, amp=True), seg.predict(image, amp=False)
    assert fast.dtype == exact.dtype == torch.float32  # the network in bfloat16, the result in float32
    assert not torch.equal(fast, exact)  # bfloat16 really ran
    assert (fast - exact).abs().mean() < 5e-3
    same = ((fast > seg.threshold) == (exact > seg.threshold)).float().mean().item()
    assert same > 0.995, same
    with torch.inference_mode():
        dtypes = []
        hook = seg.inference_model().register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        seg.predict(image[:64, :64], amp=True)
        seg.predict(image[:64, :64], amp=False)
        hook.remove()
    assert dtypes == [torch.bfloat16, torch.float32]


@pytest.mark.skipif(not cpu_has_bf16(), reason=NO_BF16)
def test_evaluate_with_and_without_amp_agree(tiny_model, ihc_dataset, tmp_path):
    scores = {}
    for flag in ("--amp", "--no-amp"):
        result = invoke(["-q", "evaluate", tiny_model, ihc_dataset.val, "--out", tmp_path / flag, "--no-sweep", flag])
        assert result.exit_code == 0, result.output
        scores[flag] = float(result.stdout.split()[1])
    assert abs(scores["--amp"] - scores["--no-amp"]) < 0.01, scores
