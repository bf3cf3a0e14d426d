"""bench/common.py's code version: a result names the commit it ran, and whether the packages or
the benchmark scripts differed from it; the results benchmarks write are not code."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import bench.common as common


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_written_results_leave_the_code_clean_and_edited_scripts_do_not(tmp_path, monkeypatch):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "run.py").write_text("print(1)\n")
    (tmp_path / "bench" / "results" / "run.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert common.code_version()["dirty_sha256"] is None
    (tmp_path / "bench" / "results" / "run.json").write_text('{"wbc": 1}\n')  # a first data set's results
    (tmp_path / "bench" / "work").mkdir()
    (tmp_path / "bench" / "work" / "model.pt").write_bytes(b"\0")
    assert common.code_version()["dirty_sha256"] is None
    (tmp_path / "bench" / "run.py").write_text("print(2)\n")
    edited = common.code_version()["dirty_sha256"]
    assert edited is not None
    (tmp_path / "bench" / "new.py").write_text("print(3)\n")
    assert common.code_version()["dirty_sha256"] not in (None, edited)


def test_a_run_clock_counts_its_children_cpu_and_keeps_the_code_it_started_with():
    import sys

    clock = common.RunClock({"commit": "abc", "dirty_sha256": None})
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)
    record = clock.record()
    assert record["code"] == {"commit": "abc", "dirty_sha256": None}
    assert record["cpu_s"] >= 0.3 and record["wall_s"] >= 0.3


def test_a_resumed_training_continues_its_checkpoint_and_a_finished_one_is_kept(ihc_dataset, tmp_path, monkeypatch):
    import json
    import os
    import sys

    from conftest import TINY, invoke

    import segmenter.training as training

    model, options = tmp_path / "model.pt", ["--seed", "0", *TINY]
    real = training._run_epoch

    def ctrl_c_in_epoch_2(seg, sampler, loader, val, state, epoch, opts):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(seg, sampler, loader, val, state, epoch, opts)

    with monkeypatch.context() as patch:
        patch.setattr(training, "_run_epoch", ctrl_c_in_epoch_2)
        assert invoke(["-q", "train", ihc_dataset.train, "--out", model, *options]).exit_code == 130
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    continued = common.resumable_train(Path(ihc_dataset.train), model, 0, TINY, resume=True)
    assert continued["resumed"]["kept"] is False and continued["resumed"]["epochs"] == 1
    assert continued["train_cpu_s"] > 0 and model.is_file() and not model.with_suffix(".ckpt").exists()
    kept = common.resumable_train(Path(ihc_dataset.train), model, 0, TINY, resume=True)
    history = json.loads(model.with_suffix(".history.json").read_text())
    assert kept == {"train_cpu_s": 0.0, "train_wall_s": 0.0,
                    "resumed": {"kept": True, "epochs": 2, "wall_s": round(sum(e["seconds"] for e in history), 1)}}


def test_a_resume_needs_the_note_of_the_run_it_continues(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match=f"^{tmp_path} holds no interrupted run of this benchmark "
                                         r"\(no started.json\): run it without --resume$"):
        common.interrupted_run(tmp_path)
    clock = common.RunClock({"commit": "abc", "dirty_sha256": None})
    common.mark_started(tmp_path, clock)
    noted = common.interrupted_run(tmp_path)
    assert noted["code"] == {"commit": "abc", "dirty_sha256": None} and noted["started"] and "kernels" in noted["cpu"]
    assert noted["cpu"]["precision"] in ("bfloat16", "float32")


def test_the_kernels_name_the_cpu_and_the_precision_where_recorded():
    from bench import report

    cpu = {"model": "AMD EPYC 9R14", "kernels": "AVX2"}
    assert report.kernel_name({"cpu": cpu}) == "AVX2 kernels, AMD EPYC"
    assert report.kernel_name({"cpu": cpu | {"precision": "float32"}}) == "AVX2 kernels, AMD EPYC, float32"
    assert report.kernel_name({"cpu": {"kernels": "AVX512", "precision": "bfloat16"}}) == "AVX512 kernels, bfloat16"
    assert report.kernel_name({}) is None


def test_a_resume_takes_an_interrupted_runs_data_only_when_its_files_and_declarations_match(tmp_path):
    """`resumed_data` returns the draw's folders moved under work/data; a file or a dataset.json that
    differs from a fresh draw stops the resume, and the scratch draw is always removed."""
    from typing import NamedTuple

    class Parts(NamedTuple):
        fit: list[Path]
        val: Path
        stems: dict[str, list[str]]

    def draw(data: Path) -> Parts:
        for part, names in {"fit_20x": ["a"], "fit_40x": ["b"], "val": ["c"]}.items():
            (data / part / "images").mkdir(parents=True)
            (data / part / "dataset.json").write_text('{"mpp": 0.5}')
            for name in names:
                (data / part / "images" / f"{name}.png").write_bytes(b"")
        return Parts([data / "fit_20x", data / "fit_40x"], data / "val", {"val": ["c"]})

    draw(tmp_path / "data")
    parts = common.resumed_data(draw, tmp_path, "tiny")
    assert parts == Parts([tmp_path / "data" / "fit_20x", tmp_path / "data" / "fit_40x"], tmp_path / "data" / "val",
                          {"val": ["c"]})
    assert not (tmp_path / "split-check").exists()
    (tmp_path / "data" / "val" / "dataset.json").write_text('{"mpp": 0.25}')
    message = f"^{tmp_path / 'data'} does not hold the split this code draws for tiny: run it without --resume$"
    with pytest.raises(SystemExit, match=message):
        common.resumed_data(draw, tmp_path, "tiny")
    assert not (tmp_path / "split-check").exists()
