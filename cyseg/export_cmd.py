"""`cyseg export MODEL --onnx OUT`: the network, its input normalisation and the sigmoid as one ONNX
graph (image in, probabilities out), checked against the torch model with ONNX Runtime before it is
put in place, with the model's classes, thresholds and working resolution in the file's metadata.

Exported with torch's TorchScript-based ONNX exporter, which ships with torch (the torch.export-based
one needs onnxscript, one more dependency for the same graph)."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmenter.base import Segmenter
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path
from segmenter.io.digest import file_digest

OPSET = 17
TOLERANCE = 1e-4  # largest difference in probability allowed between ONNX Runtime and torch


class Exported(nn.Module):
    """RGB float in [0, 255], (N, 3, H, W) with H and W multiples of the network's -> probabilities
    (N, C, H, W): the model's normalisation, its network with batch norms folded, the sigmoid."""

    def __init__(self, seg: Segmenter):
        super().__init__()
        mean = torch.tensor(seg.preprocess["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(seg.preprocess["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / (float(seg.preprocess["scale"]) * std))
        self.register_buffer("shift", -mean / std)
        self.net = copy.deepcopy(seg.inference_model()).to(memory_format=torch.contiguous_format).float().eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image * self.scale + self.shift))


def metadata(seg: Segmenter, model_path: Path) -> dict[str, str]:
    """What a user of the ONNX file needs besides the graph, as string metadata properties."""
    return {"cyseg_model_sha256": file_digest(model_path), "channels": json.dumps(list(seg.channels)),
            "classes": json.dumps(list(seg.labels)), "instances": json.dumps(list(seg.instance_classes)),
            "thresholds": json.dumps(seg.channel_thresholds()), "separation": json.dumps(seg.separation),
            "working_resolution": str(seg.resolution), "size_multiple": str(seg.multiple),
            "input": "float32 RGB 0-255, NCHW, H and W multiples of size_multiple, at working_resolution x the "
                     "images' resolution",
            "contours": json.dumps(seg.contours),
            "output": "float32 probabilities NCHW: one channel per class, then one normalised distance per "
                      "instance class, then (contours true) one contour probability per instance class"}


def export_onnx(seg: Segmenter, model_path: Path, out: Path, check_image: np.ndarray) -> dict[str, Any]:
    """Write `out` (atomically) and check it on `check_image` (RGB uint8) against torch; returns the
    check's figures. A CysegError, and nothing written, when ONNX Runtime disagrees."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise CysegError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                         "pip install 'cyseg[export]'") from exc

    module = Exported(seg).eval()
    side = seg.multiple * 16
    example = torch.zeros(1, 3, side, side)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "probabilities": {0: "batch", 2: "height", 3: "width"}})
        graph = onnx.load(str(tmp))
        for key, value in metadata(seg, model_path).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        figures = _check(module, onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]),
                         check_image, seg.multiple)
        if figures["max_abs_difference"] > TOLERANCE:
            raise CysegError(f"the ONNX export of {model_path} differs from the torch model by "
                             f"{figures['max_abs_difference']:.2g} in probability (> {TOLERANCE}); nothing written")
    return figures


def _check(module: Exported, session: Any, image: np.ndarray, multiple: int) -> dict[str, Any]:
    """The largest difference between ONNX Runtime's and torch's probabilities on `image` (cropped to
    multiples of `multiple`)."""
    h, w = (image.shape[0] // multiple) * multiple, (image.shape[1] // multiple) * multiple
    x = torch.from_numpy(np.ascontiguousarray(image[:h, :w])).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        expected = module(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    return {"checked_on": [h, w], "max_abs_difference": float(np.abs(got - expected).max())}
