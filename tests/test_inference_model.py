"""The inference copy of a network (batch norms folded into the convolutions) and the process
memory policy: same outputs as the trained model, rebuilt when the weights change."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from segmenter.allocator import keep_freed_memory, release_freed_memory
from segmenter.fusion import fold_batch_norms, weights_version
from unet import UNet, UNetSegmenter


def _trained_like(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=gen))
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen))
    return model.eval()


def test_folding_keeps_the_outputs_and_removes_every_batch_norm() -> None:
    model = _trained_like(UNet(n=4, depth=3))
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must stay trainable"
    x = torch.randn(2, 3, 40, 56)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_a_norm_not_after_a_convolution_is_kept() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)).eval()
    folded = fold_batch_norms(model)
    assert isinstance(folded[0], nn.BatchNorm2d)


def test_weights_version_changes_on_an_optimiser_step_and_on_loading() -> None:
    model = UNet(n=4, depth=3)
    before = weights_version(model)
    assert weights_version(model) == before
    model(torch.randn(1, 3, 16, 16)).mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after_step = weights_version(model)
    assert after_step != before
    model.load_state_dict(UNet(n=4, depth=3).state_dict())
    assert weights_version(model) != after_step


def test_segmenter_predicts_with_the_current_weights() -> None:
    seg = UNetSegmenter({"n": 4, "depth": 3}, device="cpu")
    _trained_like(seg.model)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    first = seg.predict(image)
    assert seg.inference_model() is seg.inference_model(), "the folded copy is cached"
    other = _trained_like(UNet(n=4, depth=3))
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    seg.model.load_state_dict(other.state_dict())
    second = seg.predict(image, amp=False)  # float32, to compare with the plain forward
    with torch.inference_mode():
        expected = torch.sigmoid(seg.model.eval()(seg.to_input(torch.from_numpy(image).permute(2, 0, 1)[None])))[0]
    torch.testing.assert_close(second, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first, second)


def test_heap_policy_keeps_results_unchanged() -> None:
    seg = UNetSegmenter({"n": 4, "depth": 3}, device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    before = seg.predict(image)
    assert isinstance(keep_freed_memory(), bool)
    after = seg.predict(image)
    release_freed_memory()
    torch.testing.assert_close(after, before)


def test_normalisation_leaves_the_callers_tensor_alone():
    seg = UNetSegmenter({"n": 4, "depth": 3}, device="cpu")
    seg.preprocess = {"scale": 255.0, "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.15]}
    for tensor in (torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8), torch.rand(1, 3, 8, 8) * 255):
        before = tensor.clone()
        out = seg.to_input(tensor)
        mean = torch.tensor(seg.preprocess["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(seg.preprocess["std"]).view(1, -1, 1, 1)
        torch.testing.assert_close(out, (before.float() / seg.preprocess["scale"] - mean) / std)
        assert torch.equal(tensor, before) and out.data_ptr() != tensor.data_ptr()
