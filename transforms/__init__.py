"""Post-processing of probability maps (normalize, smoothing, erode-dilate, threshold) in numpy/OpenCV
and in torch with identical results, and the JSON-able chains that combine them."""
from transforms.chain import (
    ChainSpec,
    build_cpu,
    build_on,
    build_torch,
    chain_radius,
    default_chain,
    idi_chain,
    validate_chain,
    with_threshold,
    without_threshold,
)
from transforms.cpu import Compose, ErodeDilate, Normalize, Smoothing, Threshold
from transforms.torch_ops import TorchCompose, TorchErodeDilate, TorchNormalize, TorchSmoothing, TorchThreshold

__all__ = [
    "ChainSpec",
    "Compose",
    "ErodeDilate",
    "Normalize",
    "Smoothing",
    "Threshold",
    "TorchCompose",
    "TorchErodeDilate",
    "TorchNormalize",
    "TorchSmoothing",
    "TorchThreshold",
    "build_cpu",
    "build_on",
    "build_torch",
    "chain_radius",
    "default_chain",
    "idi_chain",
    "validate_chain",
    "with_threshold",
    "without_threshold",
]
