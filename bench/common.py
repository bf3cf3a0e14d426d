"""Helpers shared by the benchmarks: where the real data lives, a real-microscopy test image,
and writing results as JSON."""
from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segmenter.history import history_paths
from segmenter.io.atomic import atomic_path
from segmenter.io.images import read_image

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: the note a benchmark run leaves in its work folder of the code that started it (`mark_started`)
STARTED = "started.json"
MICCAI_TEST = ("image02", "image06", "image10", "image13", "image15")  # the test tiles of the split
MICCAI_40X = tuple(f"image{i:02d}" for i in range(8, 16))  # scanned at 40x; image01-07 at 20x (data README)


def bench_image(size: int) -> np.ndarray:
    """A size x size mosaic of real microscopy: the miccai15 tiles when ../shared/data is present,
    else scikit-image's bundled IHC image."""
    folder = SHARED_DATA / "miccai15" / "images"
    if folder.is_dir():
        tiles = [read_image(p) for p in sorted(folder.glob("*.png"))]
    else:
        from skimage import data

        tiles = [np.ascontiguousarray(data.immunohistochemistry())]
    out = np.empty((size, size, 3), dtype=np.uint8)
    y = 0
    i = 0
    while y < size:
        x, row_h = 0, 0
        while x < size:
            t = tiles[i % len(tiles)]
            i += 1
            h, w = min(t.shape[0], size - y), min(t.shape[1], size - x)
            out[y:y + h, x:x + w] = t[:h, :w]
            x += w
            row_h = max(row_h, h)
        y += row_h
    return out


def link_dataset(out: Path, source: Path, stems: list[str], prefix: str = "") -> Path:
    """A dataset folder of symbolic links to `stems` of `source` (images/, masks/), named
    `prefix` + stem (a prefix keeps items of several sources apart)."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            target = out / sub / f"{prefix}{stem}.png"
            if not target.exists():
                target.symlink_to((source / sub / f"{stem}.png").resolve())
    return out


def stems_of(folder: Path) -> list[str]:
    """The item names of a dataset folder."""
    return sorted(p.stem for p in (folder / "images").glob("*.png"))


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_evaluate(model: Path, data: Path, report: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Score a dataset folder with the real `cyseg evaluate` (report in `report`); its summary.json.
    With -q it writes nothing on success; a failure's one-line error reaches stderr."""
    subprocess.run(["cyseg", "-q", "evaluate", str(model), str(data), "--out", str(report), *extra], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((report / "summary.json").read_text())


def cli_calibrate(model: Path, data: Path, out: Path, extra: Sequence[str] = ()) -> Path:
    """`model`'s settings chosen anew on a dataset folder with the real `cyseg calibrate`, written to `out`."""
    subprocess.run(["cyseg", "-q", "calibrate", str(model), str(data), "--out", str(out), *extra], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


#: What a benchmark's figures depend on: the packages it runs and the benchmark scripts themselves,
#: not what benchmarks write there (a run that measures several data sets writes each one's results
#: before measuring the next).
CODE_PATHS = ("cyseg", "cydata", "segmenter", "unet", "transforms", "metrics", "bench",
              ":(exclude)bench/results", ":(exclude)bench/work")


def code_version() -> dict[str, Any]:
    """The code a result was measured with: the git commit, and when the packages or bench/ differ
    from it (uncommitted edits, new files), a SHA-256 of that difference. Two results with the same
    commit and the same `dirty_sha256` (None: clean) ran the same code. A tree copied without its
    git folder takes the commit from $CYSEG_SOURCE_COMMIT."""
    import hashlib
    import os

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout

    if not (ROOT / ".git").exists():  # a copy of the tree (e.g. on a GPU machine): its commit comes from outside
        return {"commit": os.environ.get("CYSEG_SOURCE_COMMIT"), "dirty_sha256": None, "git_checkout": False}
    digest = hashlib.sha256(git("diff", "HEAD", "--", *CODE_PATHS))
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS).decode().split()
    for name in sorted(untracked):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    dirty = git("status", "--porcelain", "--", *CODE_PATHS).strip() != b""
    return {"commit": git("rev-parse", "HEAD").decode().strip(), "dirty_sha256": digest.hexdigest() if dirty else None}


def fresh_dir(path: Path) -> Path:
    """`path` emptied (created when missing): a benchmark never reuses a model or report of an
    earlier run, so every figure it writes was measured by this run's code."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_record(code: dict[str, Any], cpu_s: float, wall_s: float) -> dict[str, Any]:
    """The provenance every results file carries: the code version taken when the run started
    (`code_version()`), the command line, the machine's threads and CPU (its model and the instruction
    set torch's kernels use), and the run's CPU seconds (this process and its children) and wall seconds."""
    import datetime
    import os
    import sys

    import torch

    return {"code": code, "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_s": cpu_s, "wall_s": wall_s, "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu": cpu_record()}


def cpu_record() -> dict[str, str | None]:
    """This machine's CPU as results record it: its model, the instruction set torch's kernels use and the
    precision cyseg computes in there by default (`--amp`: bfloat16 where native, else float32)."""
    import torch

    from segmenter.precision import precision_name

    return {"model": _cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability(),
            "precision": precision_name(torch.device("cpu"))}


def best_epoch(model: Path) -> int:
    """The epoch a model file was kept at (its training record)."""
    import torch

    return torch.load(model, map_location="cpu", weights_only=True)["training"]["best_epoch"]


class RunClock:
    """A benchmark run from its start: the code version then (`code_version()`, or `code` when a
    run measures a part of a longer one), and the CPU seconds (this process and its finished
    children) and wall seconds since; `record()` is the run's `run_record`."""

    def __init__(self, code: dict[str, Any] | None = None):
        import time

        self.code = code if code is not None else code_version()
        self.cpu0, self.wall0 = time.process_time() + children_cpu(), time.perf_counter()

    def record(self) -> dict[str, Any]:
        """The run's provenance and its CPU and wall seconds so far."""
        import time

        return run_record(self.code, time.process_time() + children_cpu() - self.cpu0,
                          time.perf_counter() - self.wall0)


def _cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def cli_train(data: Path | Sequence[Path], model: Path, seed: int, options: Sequence[str],
              val: Path | Sequence[Path] | None = None, name: str | None = None,
              threads: int | None = None) -> tuple[float, float]:
    """Train with the real `cyseg train` on one dataset folder or several (quiet; its errors reach
    stderr), with `--val` on each validation folder and, with `threads`, that many CPU threads;
    returns the training's (CPU seconds, wall seconds)."""
    import os
    import time

    folders = [data] if isinstance(data, Path) else list(data)
    vals = [] if val is None else [val] if isinstance(val, Path) else list(val)
    cmd = ["cyseg", "-q", "train", *map(str, folders), "--out", str(model), "--seed", str(seed), *options]
    cmd += [arg for folder in vals for arg in ("--val", str(folder))]
    cmd += ["--name", name] if name is not None else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    t0 = time.perf_counter()
    code, cpu = run_child(cmd, stdout=subprocess.DEVNULL, env=env)
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return cpu, time.perf_counter() - t0


def resumable_train(data: Path | Sequence[Path], model: Path, seed: int, options: Sequence[str], *,
                    resume: bool = False, val: Path | Sequence[Path] | None = None, name: str | None = None,
                    threads: int | None = None) -> dict[str, Any]:
    """`cli_train` as a record of its CPU and wall seconds. With `resume`, the training an interrupted
    run left at `model` is kept when its model file is complete (no checkpoint beside it) and continued
    from its checkpoint otherwise (`cyseg train --resume`); `resumed` then says which, with the epochs
    and wall seconds that ran before this run (from the model's training history)."""
    from segmenter.checkpoint import checkpoint_path  # imports torch: only when a benchmark trains

    before = _history(model) if resume else []
    earlier = {"epochs": len(before), "wall_s": round(sum(epoch["seconds"] for epoch in before), 1)}
    continued = resume and checkpoint_path(str(model)).is_file()
    if resume and not continued and model.is_file():
        return {"train_cpu_s": 0.0, "train_wall_s": 0.0, "resumed": {"kept": True, **earlier}}
    cpu, wall = cli_train(data, model, seed, [*options, *["--resume"] * continued], val=val, name=name,
                          threads=threads)
    record: dict[str, Any] = {"train_cpu_s": cpu, "train_wall_s": wall}
    if continued:
        record["resumed"] = {"kept": False, **earlier}
    return record


def _history(model: Path) -> list[dict[str, Any]]:
    """The epochs a training has written beside `model` so far (none when it has not)."""
    path = history_paths(model)["json"]
    return json.loads(path.read_text()) if path.is_file() else []


def mark_started(work: Path, clock: RunClock) -> None:
    """Note in `work` which code started a benchmark run there, for a later `--resume` to record."""
    import datetime

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (work / STARTED).write_text(json.dumps({"code": clock.code, "started": started, "cpu": cpu_record()}))


def interrupted_run(work: Path) -> dict[str, Any]:
    """What `mark_started` noted of the interrupted run a `--resume` continues in `work`."""
    marker = work / STARTED
    if not marker.is_file():
        raise SystemExit(f"{work} holds no interrupted run of this benchmark (no {STARTED}): run it without --resume")
    return json.loads(marker.read_text())


def resumed_data(draw: Callable[[Path], T], work: Path, what: str) -> T:
    """What `draw` returns for the data an interrupted run wrote to `work`/data, once a fresh draw (into a
    scratch folder, then removed) is found to hold the same files and dataset.json texts; exits otherwise."""
    import shutil

    scratch = fresh_dir(work / "split-check")
    try:
        drawn = draw(scratch)
        same = _listing(scratch) == _listing(work / "data")
    finally:
        shutil.rmtree(scratch)
    if not same:
        raise SystemExit(f"{work / 'data'} does not hold the split this code draws for {what}: run it without --resume")
    return relocated(drawn, scratch, work / "data")


def _listing(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its relative path: a dataset.json's text, else ''."""
    return {str(path.relative_to(folder)): path.read_text() if path.name == "dataset.json" else ""
            for path in folder.rglob("*") if not path.is_dir()} if folder.is_dir() else {}


def relocated(value: Any, old: Path, new: Path) -> Any:
    """`value` (a path, or tuples, lists and dicts of them) with every path under `old` moved under `new`."""
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if isinstance(value, tuple):
        items = [relocated(item, old, new) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [relocated(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: relocated(item, old, new) for key, item in value.items()}
    return value


def run_child(cmd: list[str], **popen: Any) -> tuple[int, float]:
    """Run `cmd` (keyword arguments go to `subprocess.Popen`) to its end; returns its exit code and
    its own CPU seconds (user + system), right even while other runs go on beside it."""
    import os

    process = subprocess.Popen(cmd, **popen)
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def apply_quick(args: Any, quick: dict[str, Any], argv: Sequence[str]) -> None:
    """A benchmark's --quick: its tiny-budget values for every option the command line `argv` did not give."""
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in quick.items():
        if key not in given:
            setattr(args, key, value)


def scores(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a benchmark keeps of a `cyseg evaluate` summary."""
    return {k: summary[k] for k in ("n_images", "threshold", "iou_mean", "iou_std", "dice_mean", "dice_std")}
