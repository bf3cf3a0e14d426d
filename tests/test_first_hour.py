"""What a new user meets in the first hour: the surprises of issue 16, each pinned by a test."""
from __future__ import annotations

import json

from conftest import invoke


def test_rerunning_the_demo_into_the_same_folder_says_it_replaces_it(tmp_path):
    first = invoke(["demo", "--out", tmp_path / "demo"])
    assert first.exit_code == 0, first.output
    assert "already holds a demo run" not in first.stderr
    again = invoke(["demo", "--out", tmp_path / "demo"])
    assert again.exit_code == 0, again.output
    lines = [line for line in again.stderr.splitlines() if "already holds a demo run" in line]
    assert len(lines) == 1 and str(tmp_path / "demo") in lines[0]


def test_demo_refuses_a_file_as_its_output_folder(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = invoke(["demo", "--out", tmp_path / "taken"])
    assert result.exit_code == 2
    expected = f"cyseg: error: --out {tmp_path / 'taken'} is a file; give a folder for the demo's outputs"
    assert result.stderr.strip() == expected


def test_a_window_partly_outside_the_slide_is_clipped_with_a_warning(tiny_model, ihc_image, tmp_path):
    from conftest import write_rgb

    slide = tmp_path / "slide.png"
    write_rgb(slide, ihc_image)  # 512 x 512
    small = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--device", "cpu"]
    clipped = invoke(["segment", tiny_model, slide, "--window", "300,200,400,500", "--out", tmp_path / "a.geojson",
                      "--cache", tmp_path / "c1", *small])
    assert clipped.exit_code == 0, clipped.output
    warning = [line for line in clipped.stderr.splitlines() if "clipped" in line]
    assert warning == ["cyseg: --window 300,200,400,500 reaches beyond the 512x512 slide: clipped to 300,200,212,312"]
    inside = invoke(["segment", tiny_model, slide, "--window", "300,200,212,312", "--out", tmp_path / "b.geojson",
                     "--cache", tmp_path / "c2", *small])
    assert inside.exit_code == 0 and "clipped" not in inside.stderr

    def geometries(name: str) -> list:
        return [f["geometry"] for f in json.loads((tmp_path / name).read_text())["features"]]

    assert geometries("a.geojson") == geometries("b.geojson") != []


def test_both_commands_print_their_version():
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    for prog in ("cyseg", "cydata"):
        result = subprocess.run([str(Path(sys.executable).parent / prog), "--version"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout == f"{prog} {version('cyseg')}\n", result


def _interrupt_in_epoch_2(monkeypatch) -> None:
    """The user presses Ctrl-C while epoch 2 runs (epoch 1 is checkpointed)."""
    import segmenter.training as training

    real = training._run_epoch

    def run_epoch(seg, sampler, loader, val, state, epoch, opts):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(seg, sampler, loader, val, state, epoch, opts)

    monkeypatch.setattr(training, "_run_epoch", run_epoch)


def test_an_interrupted_training_says_how_to_resume_and_refuses_changed_options(ihc_dataset, tmp_path, monkeypatch):
    from conftest import TINY

    out = tmp_path / "model.pt"
    with monkeypatch.context() as patch:
        _interrupt_in_epoch_2(patch)
        interrupted = invoke(["train", ihc_dataset.train, "--out", out, *TINY])
    assert interrupted.exit_code == 130
    assert interrupted.stderr.splitlines()[-1] == (f"cyseg: interrupted: {out.with_suffix('.ckpt')} holds 1 finished "
                                                   "epoch(s); run the same command with --resume to continue")
    changed = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, "--lr", "0.01", "--resume"])
    assert changed.exit_code == 2 and not out.exists()
    assert changed.stderr.strip() == (
        f"cyseg: error: checkpoint {out.with_suffix('.ckpt')} was made with --lr 0.001, not --lr 0.01; resume with "
        "the same options, or add --resume-with-new-options to continue with the new ones")
    forced = invoke(["train", ihc_dataset.train, "--out", out, *TINY, "--lr", "0.01", "--resume-with-new-options"])
    assert forced.exit_code == 0, forced.output
    assert "resuming" in forced.stderr and "with new options: --lr 0.01 (was --lr 0.001)" in forced.stderr
    assert out.is_file() and not out.with_suffix(".ckpt").exists()


def test_a_checkpoint_from_before_an_option_existed_resumes_with_its_default(ihc_dataset, tmp_path, monkeypatch):
    import torch
    from conftest import TINY

    out = tmp_path / "model.pt"
    with monkeypatch.context() as patch:
        _interrupt_in_epoch_2(patch)
        assert invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY]).exit_code == 130
    ckpt = out.with_suffix(".ckpt")
    older = torch.load(ckpt, map_location="cpu", weights_only=True)
    for newer_option in ("elastic", "zoom"):
        del older["options"][newer_option]
    torch.save(older, ckpt)
    changed = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, "--elastic", "--resume"])
    assert changed.exit_code == 2 and not out.exists()
    assert changed.stderr.strip() == (
        f"cyseg: error: checkpoint {ckpt} was made with --no-elastic, not --elastic; resume with the same options, "
        "or add --resume-with-new-options to continue with the new ones")
    resumed = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert out.is_file() and not ckpt.exists()


class PickledCode:
    """An object torch can only restore by running code: what a foreign training script saves."""


def test_a_checkpoint_holding_pickled_code_gets_our_one_line_message(ihc_dataset, tmp_path):
    import torch
    from conftest import TINY

    out = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "optimizer": PickledCode()}, out.with_suffix(".ckpt"))
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, "--resume"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"cyseg: error: checkpoint {out.with_suffix('.ckpt')} holds Python objects, not a "
                                     "cyseg checkpoint; delete it and train without --resume")
    assert "weights_only" not in result.stderr


def _slide_run(model, slide, out, *extra):
    small = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--device", "cpu"]
    return invoke(["segment", model, slide, "--as-slide", "--out", out, "--cache", out.with_suffix(".cache"),
                   *small, *extra])


def test_a_slide_called_mostly_foreground_is_flagged_and_the_fraction_reported(tiny_model, ihc_image, tmp_path):
    from conftest import write_rgb

    slide = tmp_path / "slide.png"
    write_rgb(slide, ihc_image)
    normal = _slide_run(tiny_model, slide, tmp_path / "normal.geojson")
    assert normal.exit_code == 0, normal.output
    summary = json.loads((tmp_path / "normal.geojson").read_text())["properties"]["summary"]
    polygons = json.loads((tmp_path / "normal.geojson").read_text())["features"]
    area = sum(f["properties"]["area"] for f in polygons)
    assert summary["foreground_fraction"] == round(area / (512 * 512), 4) and 0 < area < 0.5 * 512 * 512
    assert 0 < summary["tissue_fraction"] <= 1
    assert f"covering {100 * summary['foreground_fraction']:.1f} % of the region" in normal.stdout
    assert "foreground, far more" not in normal.stderr
    # a threshold of 0 calls every pixel a cell, as a brightfield model does on a fluorescence slide
    everything = _slide_run(tiny_model, slide, tmp_path / "all.geojson", "--threshold", "0", "--no-skip-background")
    assert everything.exit_code == 0, everything.output
    assert json.loads((tmp_path / "all.geojson").read_text())["properties"]["summary"]["foreground_fraction"] > 0.9
    warnings = [line for line in everything.stderr.splitlines() if "foreground, far more" in line]
    assert len(warnings) == 1 and "fluorescence" in warnings[0]


def test_the_real_fluorescence_slide_is_flagged_and_a_brightfield_one_is_not(shared_data, tmp_path):
    dapi = shared_data / "slides" / "test3-DAPI-2-387.ndpi"
    refused = invoke(["segment", "default", dapi, "--out", tmp_path / "dapi.geojson", "--cache", tmp_path / "c1"])
    assert refused.exit_code == 2 and "looks like fluorescence" in refused.stderr
    assert "--allow-mismatch" in refused.stderr and not (tmp_path / "dapi.geojson").exists()
    fluorescence = invoke(["segment", "default", dapi, "--out", tmp_path / "dapi.geojson", "--cache", tmp_path / "c1",
                           "--allow-mismatch"])
    assert fluorescence.exit_code == 0, fluorescence.output
    assert "foreground, far more than cells cover" in fluorescence.stderr
    brightfield = invoke(["segment", "default", shared_data / "slides" / "CMU-1-Small-Region.svs",
                          "--out", tmp_path / "cmu.geojson", "--cache", tmp_path / "c2"])
    assert brightfield.exit_code == 0, brightfield.output
    assert "far more than cells cover" not in brightfield.stderr
    summary = json.loads((tmp_path / "cmu.geojson").read_text())["properties"]["summary"]
    assert summary["foreground_fraction"] < 0.5


def test_specks_are_dropped_by_default_below_a_size_learnt_from_the_training_objects(tiny_model, ihc_dataset,
                                                                                      tmp_path):
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    size = seg.training_info["object_size_px"]
    assert seg.training_info["object_size_px_by_class"] == {"cell": size}  # one unnamed foreground: its objects
    smallest = seg.smallest_object()
    assert smallest == round(3.141592653589793 / 4 * (size / 5) ** 2, 1) > 0

    def areas(*extra) -> list[float]:
        out = tmp_path / ("-".join(extra) or "auto")
        assert invoke(["-q", "segment", tiny_model, ihc_dataset.val, "--out", out, "--simplify", "0", *extra,
                       "--device", "cpu"]).exit_code == 0
        return [f["properties"]["area"] for path in sorted((out / "geojson").glob("*.geojson"))
                for f in json.loads(path.read_text())["features"]]

    everything, default = areas("--min-area", "0"), areas()
    assert min(everything) < smallest  # the model does trace specks
    assert default and min(default) >= smallest
    assert sorted(default) == sorted(a for a in everything if a >= smallest)
