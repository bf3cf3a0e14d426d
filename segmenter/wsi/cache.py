"""Finished windows kept on disk, keyed by slide, model, region and options, so that an interrupted
whole-slide run resumes and a rerun gives the identical result."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from segmenter.io.atomic import atomic_path
from segmenter.wsi.windows import Region, WsiOptions

log = logging.getLogger(__name__)


@dataclass
class WindowResult:
    """Polygons of the pixels a window owns, in processing pixels relative to the region; the
    seconds the window took, of which `inference_seconds` reading pixels and running the network
    (the rest: separating, tracing and keeping its objects)."""

    index: int
    polygons: list[Polygon]
    props: list[dict[str, Any]]
    tiles: int
    skipped: int
    seconds: float
    inference_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        polygons = shapely.to_wkb(np.asarray(self.polygons, dtype=object), hex=True).tolist()
        return {"index": self.index, "polygons": polygons, "props": self.props, "tiles": self.tiles,
                "skipped": self.skipped, "seconds": self.seconds, "inference_seconds": self.inference_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowResult:
        return cls(data["index"], list(shapely.from_wkb(data["polygons"])), data["props"],
                   data["tiles"], data["skipped"], data["seconds"], data.get("inference_seconds", 0.0))


def cache_key(slide_id: str, model_digest: str, region: Region, opts: WsiOptions) -> str:
    """Identifies a run: same slide, model, region and options -> same cached windows."""
    text = json.dumps({"slide": slide_id, "model": model_digest, "region": asdict(region), "opts": asdict(opts)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class WindowCache:
    """Finished windows' results as JSON files, written atomically, so a rerun skips them."""

    folder: Path | None
    hits: int = field(default=0)

    def path(self, index: int) -> Path | None:
        return None if self.folder is None else self.folder / f"window-{index:06d}.json"

    def load(self, index: int) -> WindowResult | None:
        path = self.path(index)
        if path is None or not path.exists():
            return None
        try:
            result = WindowResult.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable cache file %s", path)
            return None
        self.hits += 1
        return result

    def store(self, result: WindowResult) -> None:
        path = self.path(result.index)
        if path is None:
            return
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result.to_json()))
