"""Post-processing chains described as JSON-able lists of {"op": ..., params} dicts, as stored in the
model file, with builders for the numpy/OpenCV and the torch implementations."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from transforms.cpu import Compose, ErodeDilate, Normalize, Smoothing, Threshold, check_threshold
from transforms.torch_ops import TorchCompose, TorchErodeDilate, TorchNormalize, TorchSmoothing, TorchThreshold

ChainSpec = list[dict[str, Any]]

_CPU_OPS = {"normalize": Normalize, "smoothing": Smoothing, "erode_dilate": ErodeDilate, "threshold": Threshold}
_TORCH_OPS = {"normalize": TorchNormalize, "smoothing": TorchSmoothing, "erode_dilate": TorchErodeDilate,
              "threshold": TorchThreshold}
_PARAMS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in _CPU_OPS.items()}


def _params(step: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a validated step, without its op name."""
    return {key: value for key, value in step.items() if key != "op"}


def _check_step(index: int, step: Any) -> dict[str, Any]:
    """One validated step as a new dict with canonical parameter values."""
    if not isinstance(step, dict) or "op" not in step:
        raise ValueError(f"post-processing step {index} ({step!r}) is not a dict with an 'op' key; "
                         'write e.g. {"op": "smoothing", "k": 3}')
    op = step["op"]
    if not isinstance(op, str) or op not in _CPU_OPS:
        raise ValueError(f"unknown post-processing op {op!r}; use one of {', '.join(_CPU_OPS)}")
    given = sorted(key for key in step if key != "op")
    if given != sorted(_PARAMS[op]):
        raise ValueError(f"post-processing op {op!r} takes parameters {list(_PARAMS[op])}, got {given}; "
                         "give exactly those")
    built = _CPU_OPS[op](**_params(step))
    return {"op": op, **dataclasses.asdict(built)}


def validate_chain(spec: Sequence[dict[str, Any]]) -> ChainSpec:
    """Return a checked copy of `spec`; an unknown op, a missing, extra or bad parameter, or a
    threshold anywhere but last raises ValueError naming the op."""
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"post-processing chain {spec!r} is not a list of steps; "
                         'write e.g. [{"op": "smoothing", "k": 3}, {"op": "threshold", "t": 0.5}]')
    checked = [_check_step(i, step) for i, step in enumerate(spec)]
    if any(step["op"] == "threshold" for step in checked[:-1]):
        raise ValueError("post-processing op 'threshold' must be the last step of the chain; move it to the end")
    return checked


def default_chain(threshold: float = 0.5, erode_k: int = 3, erode_iterations: int = 1,
                  smoothing_k: int = 3) -> ChainSpec:
    """The method's post-processing: erode-dilate (opening), then smoothing, then threshold."""
    return validate_chain([
        {"op": "erode_dilate", "k": erode_k, "iterations": erode_iterations},
        {"op": "smoothing", "k": smoothing_k},
        {"op": "threshold", "t": threshold},
    ])


def idi_chain(threshold: float = 0.5, erode_k: int = 3, erode_iterations: int = 1,
              smoothing_k: int = 3) -> ChainSpec:
    """The method's IDI variant: per-map z-score normalisation, then the default chain."""
    return [{"op": "normalize"}, *default_chain(threshold, erode_k, erode_iterations, smoothing_k)]


def build_cpu(spec: Sequence[dict[str, Any]]) -> Compose:
    """The numpy/OpenCV implementation of the chain `spec`."""
    return Compose([_CPU_OPS[step["op"]](**_params(step)) for step in validate_chain(spec)])


def build_torch(spec: Sequence[dict[str, Any]]) -> TorchCompose:
    """The torch implementation of the chain `spec`, identical in results to `build_cpu`."""
    return TorchCompose([_TORCH_OPS[step["op"]](**_params(step)) for step in validate_chain(spec)])


def build_on(device: torch.device, spec: Sequence[dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The chain for (N, C, H, W) tensors on `device`: OpenCV on the CPU (the same results as the
    torch ops, tested; OpenCV's separable filters beat torch's pooling on the CPU), torch elsewhere."""
    if device.type != "cpu":
        return build_torch(spec)
    chain = build_cpu(spec)

    def run(x: torch.Tensor) -> torch.Tensor:
        maps = x.detach().float().reshape(-1, *x.shape[-2:]).numpy()
        return torch.from_numpy(chain(maps)).reshape(x.shape)

    return run


def chain_radius(spec: Sequence[dict[str, Any]]) -> int | None:
    """How far (pixels) the chain looks around a pixel: its output at a pixel depends only on the
    input within this distance; None when an op uses the whole map (normalize)."""
    radius = 0
    for step in validate_chain(spec):
        if step["op"] == "normalize":
            return None
        if step["op"] == "smoothing":
            radius += step["k"] // 2
        elif step["op"] == "erode_dilate":
            radius += 2 * step["iterations"] * (step["k"] // 2)
    return radius


def without_threshold(spec: Sequence[dict[str, Any]]) -> ChainSpec:
    """The chain up to its threshold, so that a sweep can smooth once and threshold many times."""
    return [step for step in validate_chain(spec) if step["op"] != "threshold"]


def with_threshold(spec: Sequence[dict[str, Any]], t: float) -> ChainSpec:
    """The chain with its threshold set to `t` (appended if it has none), e.g. for `--threshold`."""
    return [*without_threshold(spec), {"op": "threshold", "t": check_threshold(t)}]
