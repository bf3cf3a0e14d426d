"""The instance benchmark's recipe choice: the incumbent stays unless a challenger leads it, image
by image, by more than LEAD_IN_SE paired standard errors."""
from __future__ import annotations

import pytest

from bench.instances import LEAD_IN_SE, candidate, choose_recipe, image_merits, paired_lead


def recipe(merits: list[float]) -> dict:
    per_image = {f"i{k}": m for k, m in enumerate(merits)}
    return {"val_merit": sum(merits) / len(merits), "val_merit_per_image": per_image}


def test_a_noisy_lead_keeps_the_incumbent_and_a_steady_one_replaces_it():
    incumbent = recipe([0.80, 0.90, 0.70, 0.85])
    noisy = recipe([0.95, 0.80, 0.75, 0.80])  # better on average, not image by image
    steady = recipe([0.83, 0.92, 0.74, 0.88])
    chosen, choice = choose_recipe({"old": incumbent, "noisy": noisy})
    assert chosen == "old" and choice["incumbent"] == "old" and choice["lead_in_se"] == LEAD_IN_SE
    assert choice["leads"]["noisy"]["lead"] == pytest.approx(0.0125)
    chosen, choice = choose_recipe({"old": incumbent, "noisy": noisy, "steady": steady})
    assert chosen == "steady" and choice["leads"]["steady"]["lead"] > LEAD_IN_SE * choice["leads"]["steady"]["se"]
    assert choose_recipe({"only": incumbent})[0] == "only"


def test_the_lead_pairs_the_images_both_were_scored_on():
    lead = paired_lead({"a": 0.9, "b": 0.7, "c": 1.0}, {"a": 0.8, "b": 0.6})
    assert lead["images"] == 2 and lead["lead"] == pytest.approx(0.1) and lead["se"] == pytest.approx(0.0, abs=1e-12)


def test_an_images_merit_is_the_mean_over_its_classes(tmp_path):
    csv = tmp_path / "per_image.csv"
    csv.write_text("image,class,dice,object_f1\na,cell,0.9,0.7\na,nucleus,0.8,0.6\nb,cell,1.0,1.0\n")
    assert image_merits(csv) == pytest.approx({"a": 0.75, "b": 1.0})


def test_a_recipe_of_several_seeds_is_chosen_on_each_images_merit_averaged_over_them():
    runs = [{"train_cpu_s": 10.0, "train_wall_s": 5.0, "val": {"seed": 0}, "val_merit": 0.8,
             "val_merit_per_image": {"a": 0.7, "b": 0.9}, "val_tta": {"seed": 0, "tta": True},
             "tta_settings": {"seed": 0}, "val_merit_tta": 0.7, "val_merit_per_image_tta": {"a": 0.6, "b": 0.8}},
            {"train_cpu_s": 12.0, "train_wall_s": 6.0, "val": {"seed": 1}, "val_merit": 0.9,
             "val_merit_per_image": {"a": 0.9, "b": 0.9}, "val_tta": {"seed": 1, "tta": True},
             "tta_settings": {"seed": 1}, "val_merit_tta": 0.9, "val_merit_per_image_tta": {"a": 0.9, "b": 0.9}}]
    entry = candidate(["--epochs", "3"], runs)
    assert entry["train_args"] == ["--instances", "--epochs", "3"] and entry["val"] == {"seed": 0}
    assert entry["tta"] is False and entry["val_tta"] == {"seed": 0, "tta": True}
    assert entry["tta_settings"] == {"seed": 0}
    assert entry["val_merit"] == pytest.approx(0.85) and entry["val_merit_per_seed"] == [0.8, 0.9]
    assert entry["val_merit_per_image"] == pytest.approx({"a": 0.8, "b": 0.9})
    assert entry["train_cpu_s"] == 22.0 and entry["train_wall_s"] == 6.0
    assert "val_merit_per_seed" not in candidate([], runs[:1])


def test_a_recipe_is_weighed_with_test_time_augmentation_when_that_raises_its_merit_over_the_seeds():
    """TTA that helps one seed and hurts the other more is not used; where it helps on average, the
    recipe's merits (overall, per seed, per image) are those with TTA, as it would meet the test images."""
    def run(plain: dict[str, float], tta: dict[str, float]) -> dict:
        return {"train_cpu_s": 1.0, "train_wall_s": 1.0, "val": {}, "val_tta": {}, "tta_settings": {},
                "val_merit": sum(plain.values()) / len(plain), "val_merit_per_image": plain,
                "val_merit_tta": sum(tta.values()) / len(tta), "val_merit_per_image_tta": tta}
    mixed = candidate([], [run({"a": 0.8, "b": 0.8}, {"a": 0.9, "b": 0.9}),
                           run({"a": 0.8, "b": 0.8}, {"a": 0.6, "b": 0.6})])
    assert mixed["tta"] is False and mixed["val_merit"] == pytest.approx(0.8)
    helped = candidate([], [run({"a": 0.8, "b": 0.8}, {"a": 0.9, "b": 0.7}),
                            run({"a": 0.8, "b": 0.6}, {"a": 0.9, "b": 0.8})])
    assert helped["tta"] is True and helped["val_merit"] == pytest.approx(0.825)
    assert helped["val_merit_per_seed"] == pytest.approx([0.8, 0.85])
    assert helped["val_merit_per_image"] == pytest.approx({"a": 0.9, "b": 0.75})


def test_a_resume_takes_the_interrupted_runs_split_only_when_this_code_draws_the_same(tmp_path, monkeypatch):
    import bench.instances as instances

    def split_tiny(data):
        stems = {"fit": ["a", "b"], "val": ["c"], "test": ["d"]}
        for part, names in stems.items():
            (data / part / "images").mkdir(parents=True)
            for name in names:
                (data / part / "images" / f"{name}.png").write_bytes(b"")
        return instances.Split(data / "fit", data / "val", data / "test", stems)

    monkeypatch.setitem(instances.SPLITS, "tiny", split_tiny)
    split_tiny(tmp_path / "data")
    split = instances.resumed_split("tiny", tmp_path)
    assert split.val == tmp_path / "data" / "val" and split.stems["fit"] == ["a", "b"]
    assert not (tmp_path / "split-check").exists()
    (tmp_path / "data" / "val" / "images" / "c.png").rename(tmp_path / "data" / "fit" / "images" / "c.png")
    with pytest.raises(SystemExit, match=f"^{tmp_path / 'data'} does not hold the split this code draws for tiny: "
                                         "run it without --resume$"):
        instances.resumed_split("tiny", tmp_path)


def test_the_refit_is_named_after_its_recipe_so_a_resume_keeps_only_the_chosen_ones(tmp_path, monkeypatch):
    import bench.instances as instances
    from bench.instances import Split, refit

    trained = []
    monkeypatch.setattr(instances, "resumable_train", lambda data, model, seed, options, resume: (
        trained.append((model, options, resume)) or {"train_cpu_s": 1.0, "train_wall_s": 1.0}))
    monkeypatch.setattr(instances, "best_epoch", lambda model: 7)
    split = Split(tmp_path / "fit", tmp_path / "val", tmp_path / "test", {})
    for label in ("120-epochs", "120-epochs-cap50"):
        model, record = refit(split, tmp_path, ["--epochs", "120"], tmp_path / f"{label}.pt", resume=True)
        assert model == tmp_path / f"{label}-refit.pt" and record["validated_best_epoch"] == 7
    assert [m.name for m, _, _ in trained] == ["120-epochs-refit.pt", "120-epochs-cap50-refit.pt"]
    assert trained[1][1][-2:] == ["--settings-from", str(tmp_path / "120-epochs-cap50.pt")] and trained[1][2]
