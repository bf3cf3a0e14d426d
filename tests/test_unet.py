"""The U-Net: any input size comes back aligned pixel for pixel; loss has a gradient; bad configs refused."""
import pytest
import torch

from segmenter.errors import CysegError
from unet import UNet, UNetSegmenter


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (16, 16), (37, 50), (64, 33)])
def test_any_size_in_same_size_out(size, upsampling):
    model = UNet(n_classes=2, depth=4, n=4, upsampling=upsampling).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 2, *size)


def test_padding_keeps_alignment():
    """A shift of the input by one pooling period (2**(depth-1) px) shifts the output by as much
    away from the borders: padding is added at the bottom/right only and cropped back."""
    torch.manual_seed(0)
    model = UNet(n_classes=1, depth=3, n=4).eval()
    x = torch.randn(1, 3, 61, 59)
    with torch.no_grad():
        full = model(x)
        cropped = model(x[:, :, :, 4:])
    assert cropped.shape[-1] == 55
    # interior columns far from both borders agree after the shift
    assert torch.allclose(full[..., 20:40, 24:44], cropped[..., 20:40, 20:40], atol=1e-4)


def test_depth_sets_padding_multiple():
    assert UNet(depth=5).multiple == 16
    assert UNet(depth=3).multiple == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 1}, "depth 1 is outside"),
    ({"n": 0}, "initial filters n=0"),
    ({"upsampling": "nearest"}, "upsampling 'nearest' is unknown"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(CysegError, match=message):
        UNet(**kwargs)


def test_loss_is_bce_plus_soft_dice_with_gradient():
    seg = UNetSegmenter({"n": 4, "depth": 3}, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = seg.model(x)
    loss = seg.loss(logits, target)
    loss.backward()
    grads = [p.grad for p in seg.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert loss.item() > bce.item()  # the Dice term adds to BCE


def test_class_weights_must_match_classes():
    with pytest.raises(CysegError, match="2 class weights given for 1 classes"):
        UNetSegmenter({"n": 4, "depth": 3}, device="cpu", class_weights=[1, 1])


def test_distance_loss_weighs_small_objects_as_much_as_the_background():
    """A 4x4 object in a 32x32 crop: predicting 0 everywhere costs half its inside error, not the
    inside error diluted by the 1008 background pixels; a perfect prediction costs nothing."""
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 10:14, 10:14] = 0.8
    known = torch.ones(1, 1)
    zero = torch.full_like(target, -30.0)  # sigmoid ~ 0
    loss = UNetSegmenter._distance_loss(zero, target, known)
    assert loss.item() == pytest.approx(0.64 / 2, rel=1e-4)
    exact = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    assert UNetSegmenter._distance_loss(exact, target, known).item() == pytest.approx(0, abs=1e-9)
    empty = torch.zeros_like(target)
    assert UNetSegmenter._distance_loss(torch.full_like(target, -30.0), empty, known).item() < 1e-12
    assert UNetSegmenter._distance_loss(zero, target, torch.zeros(1, 1)).item() == 0
