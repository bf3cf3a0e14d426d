"""bench/active.py's arithmetic: the curves over seeds, the fraction reaching 98 % of the full-data
IoU, the round-by-round comparison; and the annotator's folder `cyseg suggest` reads."""
from __future__ import annotations

import json

import pytest
from active_records import seed_record, with_unlabelled

from bench.active import appearance_holdout, holdout, paired_differences, pool_folder, strategies, summarise


def test_summary_finds_where_each_strategy_reaches_the_target():
    per_seed = [seed_record(0.80, random=[0.50, 0.70, 0.79], suggest=[0.50, 0.795, 0.80]),
                seed_record(0.82, random=[0.52, 0.72, 0.81], suggest=[0.52, 0.80, 0.81])]
    summary = summarise(per_seed, ["random", "suggest"])
    assert summary["full_iou_mean"] == pytest.approx(0.81) and summary["target_iou"] == pytest.approx(0.7938)
    assert summary["suggest"]["fraction_reaching_target"] == pytest.approx(0.2)  # mean 0.7975 >= 0.7938
    assert summary["random"]["fraction_reaching_target"] == pytest.approx(0.3)
    assert summary["suggest"]["curve"][1]["iou_mean"] == pytest.approx(0.7975)
    assert summary["suggest_beats_random_every_round"]
    worse = [seed_record(0.8, random=[0.5, 0.7, 0.79], suggest=[0.5, 0.69, 0.8])]
    assert not summarise(worse, ["random", "suggest"])["suggest_beats_random_every_round"]
    assert summarise(worse, ["random", "suggest"])["random"]["fraction_reaching_target"] == pytest.approx(0.3)


def test_the_annotators_folder_holds_every_image_and_only_the_labelled_masks(tmp_path):
    source = tmp_path / "src"
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
        for stem in ("a", "b", "c"):
            (source / sub / f"{stem}.png").write_bytes(b"x")
    folder = pool_folder(tmp_path / "pool", source, ["a", "b", "c"], ["b"])
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["a.png", "b.png", "c.png"]
    assert [p.name for p in (folder / "masks").iterdir()] == ["b.png"]


def test_several_weights_are_strategies_of_their_own_and_the_best_is_named():
    assert strategies([1.0]) == {"random": None, "suggest": (1.0, 0.0)}
    assert strategies([0.0, 1.0]) == {"random": None, "suggest_w0": (0.0, 0.0), "suggest_w1": (1.0, 0.0)}
    assert strategies([1.0, 1.0], [0.0, 2.0]) == {"random": None, "suggest_w1": (1.0, 0.0),
                                                  "suggest_w1_d2": (1.0, 2.0)}
    curves = {"random": [0.5, 0.7, 0.72], "suggest_w0": [0.5, 0.71, 0.73], "suggest_w1": [0.5, 0.74, 0.71]}
    per_seed = [{"full": {"iou": 0.8}, **{name: [{"round": r + 1, "fraction": 0.1 * (r + 1), "iou": iou}
                                                 for r, iou in enumerate(ious)] for name, ious in curves.items()}}]
    summary = summarise(per_seed, ["random", "suggest_w0", "suggest_w1"])
    assert summary["suggest_w0_beats_random_every_round"] and not summary["suggest_w1_beats_random_every_round"]
    assert summary["best_suggest"] == "suggest_w1"  # the best mean after round 1 (0.725), though not every round


def test_the_holdout_is_seeded_and_never_in_the_pool():
    pool = [f"{i:03d}" for i in range(85)]
    kept, held = holdout(pool, 0.2)
    assert len(held) == 17 and not set(kept) & set(held) and sorted(kept + held) == pool
    assert holdout(pool, 0.2) == (kept, held)


def test_the_appearance_holdout_holds_out_one_look_per_seed_and_another_look_next(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "images").mkdir()
    looks = {"red": (200, 40, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}
    pool = []
    for look, rgb in looks.items():
        for i in range(4):
            image = np.full((16, 16, 3), rgb, np.uint8) + np.uint8(i)
            cv2.imwrite(str(tmp_path / "images" / f"{look}{i}.png"), image[:, :, ::-1])
            pool.append(f"{look}{i}")
    held = []
    for seed in range(3):
        kept, out = appearance_holdout(tmp_path, pool, 1 / 3, seed)
        assert len(out) == 4 and sorted(kept + out) == sorted(pool)
        assert len({stem[:-1] for stem in out}) == 1  # one look, whole
        held.append(out[0][:-1])
        assert appearance_holdout(tmp_path, pool, 1 / 3, seed) == (kept, out)
    assert sorted(held) == sorted(looks)  # each seed another look


def test_weights_are_uncertainty_weights_each_with_a_density_weight_after_a_colon():
    from bench.active import weight_pairs

    assert weight_pairs("0,1,1:2") == ([0.0, 1.0, 1.0], [0.0, 0.0, 2.0])
    assert weight_pairs("1") == ([1.0], [0.0])
    for bad in ("1:2:3", "a", ","):
        with pytest.raises(SystemExit, match=f"--weights {bad}: give entries W or W:D"):
            weight_pairs(bad)


def test_data_sets_of_an_earlier_run_with_the_same_settings_are_kept(tmp_path):
    from bench.active import COMPARABLE, earlier_datasets

    settings = dict.fromkeys(COMPARABLE, 1) | {"weights": [1.0], "holdout": 0.0, "holdout_by": "random", "jobs": 2}
    old_settings = {k: v for k, v in settings.items() if k not in ("weights", "holdout", "holdout_by", "jobs")}
    path = tmp_path / "active.json"
    path.write_text(json.dumps({"quick": False, "settings": old_settings, "run": {"code": "a"},
                                "datasets": {"glas": {"summary": {}}}}))
    assert earlier_datasets(path, settings) == {"glas": {"summary": {}, "run": {"code": "a"}}}
    assert earlier_datasets(path, settings | {"epochs": 2}) == {}
    assert earlier_datasets(path, settings | {"weights": [0.0]}) == {}
    assert earlier_datasets(path, settings | {"holdout_by": "appearance"}) == {}
    assert earlier_datasets(path, settings | {"density_weights": [1.0]}) == {}
    assert earlier_datasets(tmp_path / "missing.json", settings) == {}


@pytest.fixture
def tiny_active(monkeypatch, ihc_dataset):
    """bench/active.py with a tiny training budget, on the six IHC training crops as the pool and the two
    validation crops as the test images; the real cyseg on the PATH."""
    import os
    import sys
    from pathlib import Path

    import bench.active as active
    from bench.common import stems_of

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(active, "train_options", lambda args: ["--n", "4", "--depth", "3", "--epochs", "1",
                                                                "--steps-per-epoch", "2", "--batch", "2", "--crop",
                                                                "64", "--workers", "0"])
    monkeypatch.setattr(active, "pools", lambda dataset: (ihc_dataset.train, stems_of(ihc_dataset.train),
                                                          ihc_dataset.val, stems_of(ihc_dataset.val)))
    return active


def tiny_args(**changes):
    """bench/active.py's options for `tiny_active`: two rounds, one suggest strategy."""
    from argparse import Namespace

    return Namespace(**{"holdout": 0.0, "start": 0.34, "step": 0.34, "rounds": 2, "epochs": 1, "steps_per_epoch": 2,
                        "batch": 2, "crop": 64, "views": 2, "weights": [1.0], "density_weights": [0.0],
                        "resume": False, "score_unlabelled": False, "replicates": 1, **changes})


def test_a_resumed_seed_keeps_its_finished_trainings_and_scores_as_before(tmp_path, tiny_active):
    """A seed run again with --resume in its work folder keeps every finished model (no training CPU),
    suggests and scores again from them, gets the same curves, and names the trainings it kept; the
    annotator's and training folders are written anew."""
    first = tiny_active.one_seed("tiny", 0, tiny_args(), tmp_path)
    assert "resumed" not in first
    (tmp_path / "random" / "round2" / "data" / "images" / "stale.png").write_bytes(b"")
    again = tiny_active.one_seed("tiny", 0, tiny_args(resume=True), tmp_path)
    assert set(again.pop("resumed")) == {"full", "round1", "random/round2", "suggest/round2"}
    assert again == {**first, "full": {**first["full"], "train_cpu_s": 0.0},
                     **{s: [{**r, "train_cpu_s": 0.0} for r in first[s]] for s in ("random", "suggest")}}
    assert not (tmp_path / "random" / "round2" / "data" / "images" / "stale.png").exists()


def test_unlabelled_scores_meet_every_strategys_model_on_the_pool_images_none_labelled(tmp_path, tiny_active,
                                                                                       ihc_dataset):
    """--score-unlabelled scores each round's models again on the pool images that neither random nor suggest
    labelled by that round (the same images for both), and the summary pairs them by seed like the test IoU."""
    import csv

    from bench.common import stems_of

    out = tiny_active.one_seed("tiny", 0, tiny_args(start=0.17, step=0.17, score_unlabelled=True), tmp_path)
    seen = {stem for s in ("random", "suggest") for stem in stems_of(tmp_path / s / "round2" / "data")}
    rest = [stem for stem in stems_of(ihc_dataset.train) if stem not in seen]
    assert len(rest) >= 3
    for strategy in ("random", "suggest"):
        assert "unlabelled_iou" not in out[strategy][0]
        assert out[strategy][1]["unlabelled_images"] == len(rest)
        assert 0 <= out[strategy][1]["unlabelled_iou"] <= 1
        with open(tmp_path / "unlabelled" / "round2" / strategy / "per_image.csv", newline="") as handle:
            assert sorted(row["image"] for row in csv.DictReader(handle)) == rest
    gap = summarise([out], ["random", "suggest"])["suggest_minus_random_unlabelled"]
    assert [g["round"] for g in gap] == [2]
    assert gap[0]["mean"] == pytest.approx(out["suggest"][1]["unlabelled_iou"] - out["random"][1]["unlabelled_iou"])


def test_replicates_train_each_labelled_set_again_with_their_own_seed_and_score_the_mean(tmp_path, tiny_active):
    """--replicates 2: every round after the first trains the same labelled images twice, the second with training
    seed + 100 in replicate1/ (both strategies alike, so the pairs stay paired); the round's test and unlabelled IoU
    are the two models' means, each one's kept beside; round 1 and the suggestions come from the first model."""
    from bench.common import stems_of

    out = tiny_active.one_seed("tiny", 0, tiny_args(start=0.17, step=0.17, score_unlabelled=True, replicates=2),
                               tmp_path)
    for strategy in ("random", "suggest"):
        here = tmp_path / strategy / "round2"
        assert stems_of(here / "replicate1" / "data") == stems_of(here / "data")
        assert [_training_seed(d / "model.pt") for d in (here, here / "replicate1")] == [0, 100]
        second = out[strategy][1]
        assert "iou_replicates" not in out[strategy][0]
        assert len(second["iou_replicates"]) == 2
        assert second["iou"] == pytest.approx(sum(second["iou_replicates"]) / 2)
        assert second["unlabelled_iou"] == pytest.approx(sum(second["unlabelled_iou_replicates"]) / 2)
        assert (tmp_path / "unlabelled" / "round2" / strategy / "replicate1" / "per_image.csv").is_file()
    assert not (tmp_path / "round1" / "replicate1").exists()


def test_fewer_than_one_replicate_is_refused_before_anything_runs(monkeypatch):
    """--replicates 0 is a one-line error naming the option and its least value."""
    import sys

    import bench.active as active

    monkeypatch.setattr(sys, "argv", ["active.py", "--replicates", "0"])
    with pytest.raises(SystemExit, match=r"--replicates 0 must be at least 1 \(one training per labelled set\)"):
        active.parse_args()


def _training_seed(model):
    """The training seed a model file records."""
    from unet import load_segmenter

    return load_segmenter(model).training_info["options"]["seed"]


def test_paired_differences_compare_each_seed_with_its_own_random_run():
    """suggest − random per round within each seed: the mean, its standard error and the seeds ahead, so
    that a lag in one seed is not hidden by the other seeds' spread of absolute IoU."""
    per_seed = [seed_record(0.8, random=[0.50, 0.60, 0.70], suggest=[0.50, 0.62, 0.69]),
                seed_record(0.8, random=[0.40, 0.70, 0.72], suggest=[0.40, 0.74, 0.71])]
    first, second, third = paired_differences(per_seed, "suggest")
    assert first == {"round": 1, "mean": 0.0, "se": 0.0, "seeds_ahead": 0, "seeds": 2}
    assert second["mean"] == pytest.approx(0.03) and second["se"] == pytest.approx(0.01)
    assert second["seeds_ahead"] == 2 and third["seeds_ahead"] == 0 and third["mean"] == pytest.approx(-0.01)
    assert paired_differences(per_seed[:1], "suggest")[1]["se"] is None
    with_unlabelled(per_seed[1], {"random": 0.8, "suggest": 0.9}, 5, index=2)
    assert paired_differences(per_seed, "suggest", "unlabelled_iou") == []
    assert summarise(per_seed, ["random", "suggest"])["suggest_minus_random"][1] == second
