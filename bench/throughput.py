"""Throughput benchmark: cyseg's whole predict path (read, normalise, tile, infer, blend,
post-process) and training loop, each beside the bare model (`model(x)` in a loop) measured in
the same run, interleaved, so the ratio is fair on a noisy machine.

    python bench/throughput.py [--quick] [--device cpu|cuda] [--out bench/results/throughput_<device>.json]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_image, write_results  # noqa: E402
from segmenter.allocator import freeze_loaded_objects, keep_freed_memory  # noqa: E402
from segmenter.base import DEFAULT_OVERLAP, DEFAULT_TILE  # noqa: E402
from segmenter.io.dataset import write_png  # noqa: E402
from segmenter.io.images import read_image  # noqa: E402
from segmenter.precision import autocast, precision_name  # noqa: E402
from segmenter.tiling import tile_spans  # noqa: E402
from unet import UNetSegmenter  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(seg: UNetSegmenter, tile: int, batch: int, min_seconds: float, plain: bool = False,
                 amp: bool = True) -> float:
    """MP/s of `model(x)` on random normalised batches of `tile`² tiles (the ceiling): the network
    as inference runs it (batch norms folded, in the precision `amp` selects), or with `plain` the
    trained module as it is."""
    x = torch.randn(batch, 3, tile, tile, device=seg.device)
    if seg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seg.model.eval()
    model = seg.model if plain else seg.inference_model()
    with torch.inference_mode(), autocast(seg.device, amp):
        model(x)
        _sync(seg.device)
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < min_seconds:
            model(x)
            n += 1
        _sync(seg.device)
    return n * batch * tile * tile / 1e6 / (time.perf_counter() - start)


def computed_megapixels(height: int, width: int, tile: int, overlap: int, multiple: int) -> float:
    """Pixels the network computes for one image: the tiles, overlaps counted twice."""
    ys, xs = tile_spans(height, tile, overlap, multiple), tile_spans(width, tile, overlap, multiple)
    return sum(h for _, h in ys) * sum(w for _, w in xs) / 1e6


def predict_path(seg: UNetSegmenter, path: Path, tile: int, overlap: int, batch: int, min_seconds: float) -> float:
    """MP/s of image area for read -> predict (tiled, blended) -> post-processed mask."""
    n, start, pixels = 0, time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < min_seconds:
        image = read_image(path)
        probs = seg.predict(image, tile=tile, overlap=overlap, batch=batch)
        with torch.inference_mode():
            mask = seg.masks_from_probabilities(probs)
        mask.cpu()
        pixels += image.shape[0] * image.shape[1]
        n += 1
    return pixels / 1e6 / (time.perf_counter() - start)


def bare_training(seg: UNetSegmenter, crop: int, batch: int, steps: int) -> float:
    """Images/s of forward + loss + backward + Adam step on random tensors (in the precision the
    training loop uses)."""
    opt = seg.optimizer(1e-3)
    seg.model.train()
    x = torch.randn(batch, 3, crop, crop, device=seg.device)
    y = (torch.rand(batch, 1, crop, crop, device=seg.device) > 0.5).float()
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            _sync(seg.device)
            start = time.perf_counter()
        opt.zero_grad()
        with autocast(seg.device):
            logits = seg.model(x)
        seg.loss(logits, y).backward()
        opt.step()
    _sync(seg.device)
    return steps * batch / (time.perf_counter() - start)


def training_loop(seg: UNetSegmenter, data: Path, crop: int, batch: int, steps: int) -> float:
    """Images/s of cyseg's training loop (crop sampling, augmentation, loader, loss, step)."""
    start = time.perf_counter()
    seg.fit(data, None, epochs=1, steps_per_epoch=steps, batch=batch, crop=crop, workers=1, progress=False)
    _sync(seg.device)
    return steps * batch / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="n=16 and tile 512 only, short timings")
    parser.add_argument("--size", type=int, default=2048, help="side of the benchmark image")
    parser.add_argument("--overlap-fraction", type=float, default=DEFAULT_OVERLAP / DEFAULT_TILE,
                        help="tile overlap as a fraction of the tile side (default: the seam-safe default, 192/1024)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def write_inputs(work: Path, size: int) -> tuple[Path, Path]:
    """The benchmark image (PNG, read back by the predict path) and a one-item training set cut from
    it (its dark pixels as the mask): (image path, dataset folder)."""
    image_path = work / "bench.png"
    write_png(image_path, bench_image(size))
    train_dir = work / "train"
    (train_dir / "images").mkdir(parents=True)
    (train_dir / "masks").mkdir()
    image = read_image(image_path)
    write_png(train_dir / "images" / "a.png", image[:1024, :1024])
    write_png(train_dir / "masks" / "a.png", ((image[:1024, :1024].mean(axis=2) < 150) * 255).astype(np.uint8))
    return image_path, train_dir


def inference_configs(ns: list[int], tiles: list[int], overlap_fraction: float) -> list[tuple[int, int, int]]:
    """(U-Net n, tile, overlap) to measure: every width and tile at the overlap fraction, plus the
    thinnest overlap, whose seams the default tiling avoids, for comparison."""
    configs = [(n, tile, round(tile * overlap_fraction / 16) * 16) for n in ns for tile in tiles]
    return [*configs, (16, 512, 32)]


def measure_inference(seg: UNetSegmenter, n: int, image_path: Path, size: int, tile: int, overlap: int,
                      seconds: float) -> dict[str, Any]:
    """One tiling's row: bare forward and predict path interleaved, the best of two rounds each
    (it resists machine noise), the float32 bare forward, and the pixels the tiling computes."""
    batch = 4 if tile <= 512 else 2
    bare, full = [], []
    for _ in range(2):
        bare.append(bare_forward(seg, tile, batch, seconds))
        full.append(predict_path(seg, image_path, tile, overlap, batch, seconds))
    float32 = bare_forward(seg, tile, batch, seconds, amp=False)
    redundancy = computed_megapixels(size, size, tile, overlap, seg.multiple) / (size ** 2 / 1e6)
    row = {"n": n, "tile": tile, "batch": batch, "overlap": overlap, "bare_forward_mp_s": max(bare),
           "predict_path_mp_s": max(full), "ratio_image_area": max(full) / max(bare),
           "overlap_redundancy": redundancy, "ratio_same_work": max(full) * redundancy / max(bare),
           "bare_forward_float32_mp_s": float32, "predict_path_vs_float32_bare": max(full) / float32}
    print(f"n={n:2d} tile={tile:4d} overlap={overlap:3d}  bare {row['bare_forward_mp_s']:7.3f} MP/s  predict "
          f"{row['predict_path_mp_s']:7.3f} MP/s of image  ratio {row['ratio_image_area']:.1%} (pipeline on the "
          f"same tiles {row['ratio_same_work']:.1%}, overlap computes x{redundancy:.3f}; float32 bare {float32:7.3f} "
          f"MP/s)", flush=True)
    return row


def measure_training(n: int, train_dir: Path, device: str, steps: int) -> dict[str, Any]:
    """One width's training row: the bare step and cyseg's loop, on fresh networks' 256² crops."""
    seg = UNetSegmenter({"n": n}, device=device)
    bare_t = bare_training(seg, 256, 8, steps)
    loop_t = training_loop(seg, train_dir, 256, 8, steps)
    print(f"n={n:2d} training  bare {bare_t:6.2f} img/s  loop {loop_t:6.2f} img/s  ratio {loop_t / bare_t:.1%}",
          flush=True)
    return {"n": n, "crop": 256, "batch": 8, "bare_train_img_s": bare_t, "train_loop_img_s": loop_t,
            "ratio": loop_t / bare_t}


def result_record(args: argparse.Namespace, device: str, rows: list[dict[str, Any]],
                  train_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file: the machine, the settings and both tables."""
    return {
        "benchmark": "throughput", "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
        "precision": precision_name(torch.device(device)),
        "image": f"{args.size}x{args.size} mosaic of real microscopy (bench.common.bench_image)",
        "overlap_fraction": args.overlap_fraction, "inference": rows, "training": train_rows,
        "target": "predict path >= 85% of bare forward at tile 512",
        "ratios": ("ratio_image_area: image MP/s over bare-forward MP/s, overlap cost included; "
                   "ratio_same_work: the same for the pixels the network actually computes (pipeline overhead only); "
                   "bare and predict both in `precision` (the default), bare_forward_float32_mp_s with --no-amp"),
    }


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # the heap policy every cyseg command runs with
    ns, tiles = ([16], [512]) if args.quick else ([8, 16, 32], [256, 512, 1024])
    seconds = 2.0 if args.quick else 4.0
    image_path, train_dir = write_inputs(Path(tempfile.mkdtemp(prefix="cyseg-bench-")), args.size)
    segs = {n: UNetSegmenter({"n": n}, device=args.device) for n in [*ns, 16]}
    freeze_loaded_objects()  # as every cyseg command does once its model is loaded
    rows = [measure_inference(segs[n], n, image_path, args.size, tile, overlap, seconds)
            for n, tile, overlap in inference_configs(ns, tiles, args.overlap_fraction)]
    train_rows = [measure_training(n, train_dir, args.device, 5 if args.quick else 10) for n in ns]
    device = str(UNetSegmenter({"n": 8}, device=args.device).device)
    out = args.out or ROOT / "bench" / "results" / f"throughput_{device.split(':')[0]}.json"
    write_results(out, result_record(args, device, rows, train_rows))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
