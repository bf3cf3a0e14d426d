"""Resumable training: after every epoch the loop's whole state is written beside the model
(`<model>.ckpt`), so that `--resume` continues an interrupted run to the weights an uninterrupted
run reaches."""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from segmenter.errors import CysegError, ModelFileError
from segmenter.io.atomic import atomic_path

if TYPE_CHECKING:
    from segmenter.base import Segmenter

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """What the training loop carries from one epoch to the next; a checkpoint saves all of it."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # epochs done
    best_val_iou: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from `checkpoint` (as `read_checkpoint` returns it)."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = checkpoint["history"]
        self.epoch = checkpoint["epoch"]
        self.best_val_iou, self.best_epoch = checkpoint["best_val_iou"], checkpoint["best_epoch"]
        self.best_state = checkpoint["best_state"]


def checkpoint_path(out: str) -> Path:
    """Where the checkpoint of the model written at `out` goes."""
    return Path(out).with_suffix(".ckpt")


def write_checkpoint(path: Path, seg: Segmenter, state: LoopState, options: dict[str, Any], dataset: str) -> None:
    """Write the model, the loop's state and what the run was made with (options, dataset hash)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": seg.copy_state_dict(), "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                    "epoch": state.epoch, "history": state.history, "best_val_iou": state.best_val_iou,
                    "best_epoch": state.best_epoch, "best_state": state.best_state, "preprocess": seg.preprocess,
                    "options": options, "dataset": dataset}, tmp)


#: Options that shape the rest of the run (the learning-rate schedule, the crops, the augmentation):
#: a resumed run keeps them unless told otherwise, or it is no longer the run that was interrupted.
RUN_OPTIONS = ("epochs", "steps_per_epoch", "batch", "crop", "lr", "min_lr_ratio", "colour", "translate", "zoom",
               "elastic", "gap_weight", "distance_cap", "amp")


def read_checkpoint(path: Path | None, options: dict[str, Any], dataset: str, new_options: bool = False,
                    defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint at `path`, refused unless it was made on this dataset with this seed and
    resolution (continuing another run's state would silently train something else), and with the
    same run options unless `new_options` allows changing them. A run option the checkpoint does not
    record was added to cyseg after it was written, so its run had that option's value in `defaults`
    (an option's default is the behaviour from before it existed)."""
    if path is None or not path.exists():
        raise CysegError(f"--resume given but no checkpoint {path} exists; run without --resume")
    checkpoint = _load(path)
    made = checkpoint.get("options", {})
    if (made.get("seed"), made.get("resolution", 1.0), checkpoint.get("dataset")) != \
            (options["seed"], options["resolution"], dataset):
        raise CysegError(f"checkpoint {path} was made with another dataset, seed or resolution; delete it or "
                         "use the same options")
    made = {**{name: value for name, value in (defaults or {}).items() if name in RUN_OPTIONS}, **made}
    changed = [name for name in RUN_OPTIONS if made.get(name) != options[name]]
    if changed and not new_options:
        raise CysegError(f"checkpoint {path} was made with {_flags(made, changed)}, not {_flags(options, changed)}; "
                         "resume with the same options, or add --resume-with-new-options to continue with the new ones")
    if changed:
        log.warning("resuming %s with new options: %s (was %s)", path, _flags(options, changed), _flags(made, changed))
    return checkpoint


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint's content, opened without running any code it may hold."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal of pickled objects: its advice to unpickle is unsafe
        raise ModelFileError(f"checkpoint {path} holds Python objects, not a cyseg checkpoint; delete it and train "
                             "without --resume") from None
    except Exception:  # a truncated or damaged file: never train from a wrong state
        raise ModelFileError(f"checkpoint {path} cannot be read (truncated or not a checkpoint); delete it and "
                             "train without --resume") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "optimizer" not in checkpoint:
        raise ModelFileError(f"checkpoint {path} is not a cyseg checkpoint; delete it and train without --resume")
    return checkpoint


def _flags(options: dict[str, Any], names: list[str]) -> str:
    """'--lr 0.001 --colour' for the options `names` as `options` has them."""
    words = []
    for name in names:
        value, flag = options.get(name), f"--{name.replace('_', '-')}"
        words.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(words)
