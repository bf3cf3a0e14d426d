"""What separating instances costs the whole-slide engine: the same instance model on bench/wsi.py's
tissue-dense region (the same mosaic slide, background skipping off), with instances (the seeded
watershed, objects kept whole across windows) and without (each class's connected regions),
interleaved, best of two each; and the peak RSS of a `cyseg segment` process on that region with
each setting.

    python bench/wsi_instances.py --model MODEL --label NAME [--size 16384] [--fill 0.08] [--region 4096]

MODEL must be trained with `cyseg train --instances` (bench/instances.py leaves one per data set in
its work folder). Results: bench/results/wsi_instances_cpu.json (or _cuda on a GPU), one entry per
`--label` (replaced when rerun).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import code_version, write_results  # noqa: E402
from bench.wsi import densest_region, load_model, timed_build  # noqa: E402
from segmenter.io.digest import file_digest  # noqa: E402
from segmenter.wsi.readers import open_slide  # noqa: E402
from segmenter.wsi.windows import Region, WsiOptions  # noqa: E402

TARGETS = {"instances_vs_regions": ">= 0.80", "peak_rss_mb": "< 2048"}


def region_seconds(seg, model_path: Path, slide: Path, region: Region, instances: bool) -> tuple[float, dict]:
    """Seconds of the in-process engine on the region (no cache) and its summary."""
    from segmenter.wsi.scaleout import InProcess
    from segmenter.wsi.segment import segment_slide

    reader = open_slide(slide)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = segment_slide(seg, model_path, reader, Path(tmp) / "r.geojson",
                                WsiOptions(skip_background=False, instances=instances), InProcess(seg),
                                f"{region.x},{region.y},{region.w},{region.h}", None, progress=False)
        return time.perf_counter() - start, summary


def peak_rss(model_path: Path, slide: Path, region: Region, instances: bool, work: Path) -> float:
    """Peak RSS (MB) of a `cyseg segment` process on the region, measured by a wrapper process."""
    out = work / f"region-{instances}.geojson"
    command = [sys.executable, "-m", "cyseg.cli", "-q", "segment", str(model_path), str(slide), "--out", str(out),
               "--window", f"{region.x},{region.y},{region.w},{region.h}", "--no-skip-background",
               "--cache", str(work / f"cache-{instances}"), "--instances" if instances else "--no-instances"]
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True)
    return round(int(done.stdout.strip().splitlines()[-1]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model trained with cyseg train --instances")
    parser.add_argument("--label", required=True, help="the results entry, e.g. the model's training data")
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--fill", type=float, default=0.08)
    parser.add_argument("--region", type=int, default=4096)
    args = parser.parse_args()
    code, start = code_version(), time.perf_counter()
    model_path, seg = load_model(args.model)
    if not seg.instance_classes:
        raise SystemExit(f"{model_path} was not trained with --instances; give an instance model")
    device = seg.device.type
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide = work / "mosaic.tif"
        placements = timed_build(slide, args.size, args.fill)
        region = densest_region(placements, args.size, args.region)
        runs: dict[str, list[float]] = {"instances": [], "regions": []}
        summaries: dict[str, Any] = {}
        for _ in range(2):
            for name in runs:
                seconds, summaries[name] = region_seconds(seg, model_path, slide, region, name == "instances")
                runs[name].append(seconds)
                print(f"{name:9s} {seconds:.1f} s, {summaries[name]['objects']}", flush=True)
        rss = {name: peak_rss(model_path, slide, region, name == "instances", work) for name in runs}
    megapixels = region.w * region.h / 1e6
    best = {name: megapixels / min(seconds) for name, seconds in runs.items()}
    result = {"benchmark": "wsi_instances", "device": device, "cpu_threads": torch.get_num_threads(),
              "model": {"path": str(model_path), "sha256": file_digest(model_path),
                        "classes": list(seg.labels), "instances": list(seg.instance_classes),
                        "separation": seg.separation},
              "slide": {"size": [args.size, args.size], "fill": args.fill}, "region": region.__dict__,
              "seconds": runs, "mp_per_s": best, "instances_vs_regions": best["instances"] / best["regions"],
              "objects": {name: summaries[name]["objects"] for name in runs}, "peak_rss_mb": rss,
              "targets": TARGETS, "code": code, "wall_s": time.perf_counter() - start}
    out = ROOT / "bench" / "results" / f"wsi_instances_{device}.json"
    write_results(out, {**(json.loads(out.read_text()) if out.exists() else {}), args.label: result})
    print(f"instances {best['instances']:.3f} MP/s vs regions {best['regions']:.3f} MP/s: "
          f"{result['instances_vs_regions']:.1%}; peak RSS {rss['instances']} / {rss['regions']} MB -> {out}")


if __name__ == "__main__":
    main()
