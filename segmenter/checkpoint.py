"""Resumable training: after every epoch the loop's whole state is written beside the model
(`<model>.ckpt`), so that `--resume` continues an interrupted run to the weights an uninterrupted
run reaches."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from segmenter.errors import CysegError, ModelFileError
from segmenter.io.atomic import atomic_path

if TYPE_CHECKING:
    from segmenter.base import Segmenter


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


def write_checkpoint(path: Path, seg: "Segmenter", state: LoopState, options: dict[str, Any], dataset: str) -> None:
    """Write the model, the loop's state and what the run was made with (options, dataset hash)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": seg.copy_state_dict(), "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                    "epoch": state.epoch, "history": state.history, "best_val_iou": state.best_val_iou,
                    "best_epoch": state.best_epoch, "best_state": state.best_state, "preprocess": seg.preprocess,
                    "options": options, "dataset": dataset}, tmp)


def read_checkpoint(path: Path | None, seed: int, resolution: float | None, dataset: str) -> dict[str, Any]:
    """The checkpoint at `path`, refused unless it was made with this seed, resolution and dataset
    (continuing another run's state would silently train something else)."""
    if path is None or not path.exists():
        raise CysegError(f"--resume given but no checkpoint {path} exists; run without --resume")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so, never train from a wrong state
        raise ModelFileError(f"checkpoint {path} cannot be read ({exc}); delete it and train without --resume") from exc
    made = checkpoint.get("options", {})
    if (made.get("seed"), made.get("resolution", 1.0), checkpoint.get("dataset")) != (seed, resolution, dataset):
        raise CysegError(f"checkpoint {path} was made with another dataset, seed or resolution; delete it or "
                         "use the same options")
    return checkpoint
