"""The model file (DESIGN §4): one `*.pt` that `torch.load(weights_only=True)` opens, holding only
plain types and tensors. Anything else is refused with a message that says what the file is."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from segmenter.errors import ModelFileError
from segmenter.io.atomic import atomic_path
from segmenter.resolution import MAX_RESOLUTION

FORMAT = "cyseg-model/1"
REQUIRED = ("format", "arch", "config", "state_dict", "preprocess", "threshold", "postprocess")


def plain(value: Any) -> Any:
    """Reduce a value to the plain types `weights_only` loading accepts (tensors kept as they are)."""
    if isinstance(value, torch.Tensor) or value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return str(value)


def save_model_file(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Write a model file atomically (temporary name, then rename)."""
    missing = [k for k in REQUIRED if k not in content and k != "format"]
    if missing:
        raise ModelFileError(f"model content lacks {', '.join(missing)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(plain({**content, "format": FORMAT}), tmp)
    return path


def _is_torch_archive(path: Path) -> bool:
    """A whole file in one of torch.save's formats: a zip archive, or the legacy pickle stream."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(16).startswith(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2))


def _describe(content: Any) -> str:
    """What a loaded file that is not a cyseg model holds, for the error message."""
    if isinstance(content, dict):
        if content and all(isinstance(v, torch.Tensor) for v in content.values()):
            return "a bare state_dict"
        keys = ", ".join(map(str, list(content)[:5])) + (", ..." if len(content) > 5 else "")
        return f"a dict ({keys or 'empty'})"
    return f"a {type(content).__name__}"


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model file; raise ModelFileError naming the file and the fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; give a .pt file written by 'cyseg train'")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise ModelFileError(f"model file {path} cannot be read ({exc.strerror}); fix its permissions") from exc
    except Exception as exc:  # whatever a damaged or foreign file makes the unpickler raise
        kind = "is not a PyTorch file (corrupt or truncated?)"
        if "weights only" in str(exc).lower() and _is_torch_archive(path):
            kind = "holds Python objects, not a cyseg model (a bare pickled model or a foreign checkpoint?)"
        raise ModelFileError(f"model file {path} {kind}; give a .pt file written by 'cyseg train'") from exc
    if not isinstance(content, dict) or "format" not in content:
        raise ModelFileError(f"model file {path} is {_describe(content)}, not a cyseg model (no 'format' key); "
                             "retrain it with 'cyseg train'")
    if content["format"] != FORMAT:
        raise ModelFileError(f"model file {path} has format {content['format']!r}, not {FORMAT!r}; "
                             "give a .pt file written by 'cyseg train'")
    missing = [k for k in REQUIRED if k not in content]
    if missing:
        raise ModelFileError(f"model file {path} lacks {', '.join(missing)}; retrain it with 'cyseg train'")
    check_content(content, path)
    return content


def check_content(content: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a model file whose pre- or post-processing cannot work (an edited or damaged file)
    now, naming the file, rather than later with a less helpful error."""
    from transforms.chain import validate_chain
    from transforms.cpu import check_threshold

    pre = content["preprocess"]
    if not (isinstance(pre, dict) and {"scale", "mean", "std"} <= set(pre) and isinstance(pre["mean"], list)
            and isinstance(pre["std"], list) and len(pre["mean"]) == len(pre["std"])):
        raise ModelFileError(f"model file {path} has no usable preprocess (scale, mean, std per channel); "
                             "retrain it with 'cyseg train'")
    resolution = pre.get("resolution", 1.0)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not 0 < resolution <= MAX_RESOLUTION:
        raise ModelFileError(f"model file {path} has an unusable working resolution {resolution!r} (a number in "
                             f"(0, {MAX_RESOLUTION:g}]); retrain it with 'cyseg train'")
    try:
        check_threshold(content["threshold"])
        validate_chain(content["postprocess"])
    except ValueError as exc:
        reason = str(exc).split(";")[0]
        raise ModelFileError(f"model file {path} is damaged ({reason}); retrain it with 'cyseg train'") from exc
