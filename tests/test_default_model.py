"""The shipped model: its recipe's three-way data split per source (bench/default_model.py) and the
provenance and scope its file holds."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from cyseg.models import SHIPPED


def test_recipe_splits_each_source_three_ways(shared_data, tmp_path):
    from bench.common import MICCAI_TEST
    from bench.default_model import STAINS, source_parts

    parts = source_parts(tmp_path / "a")
    counts = {s: (len(p.stems["fit"]), len(p.stems["val"]), len(p.stems["test"])) for s, p in parts.items()}
    assert counts == {"miccai15": (8, 2, 5), "wbc": (192, 48, 60), "urothelial": (128, 32, 40), "isbi2014": (27, 9, 9)}
    assert parts["miccai15"].stems["test"] == list(MICCAI_TEST)  # the accuracy benchmark's test tiles
    for source, p in parts.items():
        fit, val, test = (set(p.stems[k]) for k in ("fit", "val", "test"))
        assert not fit & val and not fit & test and not val & test
        for folder in (*p.fit, p.val, p.test):
            assert json.loads((folder / "dataset.json").read_text())["stain"] == STAINS[source]
    by_magnification = {f.name: json.loads((f / "dataset.json").read_text())["mpp"] for f in parts["miccai15"].fit}
    assert by_magnification == {"fit_20x": 0.5, "fit_40x": 0.25}
    assert sum(len(list((f / "images").iterdir())) for f in parts["miccai15"].fit) == 8
    assert source_parts(tmp_path / "b")["wbc"].stems == parts["wbc"].stems  # the same split every time


def test_recorded_parts_declare_the_chosen_recipes_read_scales(shared_data, tmp_path):
    """The shipped model is scored again (float32 rescore, accuracy floors) on folders read as its
    recipe read them: a recipe that halved the urothelial crops gets halved test crops."""
    from bench.default_model import recorded_parts

    record = json.loads((REPO / "bench" / "results" / "default_model.json").read_text())

    def read_scales(chosen: dict) -> dict[str, float | None]:
        parts = recorded_parts({**record, "chosen": "x", "candidates": {"x": chosen}}, tmp_path)
        return {s: json.loads((p.test / "dataset.json").read_text()).get("read_scale") for s, p in parts.items()}

    assert read_scales({"read_scales": {"urothelial": 0.5}}) == {"miccai15": None, "wbc": None, "urothelial": 0.5,
                                                                 "isbi2014": None}
    assert set(read_scales({}).values()) == {None}  # a record from before read scales


def test_shipped_model_records_its_recipe_and_scope():
    from bench.default_model import NAMES

    training = torch.load(SHIPPED["default"], map_location="cpu", weights_only=True)["training"]
    record = json.loads((REPO / "bench" / "results" / "default_model.json").read_text())
    chosen = record["candidates"][record["chosen"]]
    options = training["options"]
    assert f"--zoom {options['zoom']}" in chosen["train_args"] and options["colour"]
    assert training["best_epoch"] == chosen["best_epoch"]
    assert training["threshold"]["chosen_on"] == "validation images"
    assert "bench/default_model.py" in training["name"]
    scope = training["scope"]
    assert scope["classes"] == ["cell", "nucleus"] and scope["modality"] == ["brightfield"]
    assert scope["mpp_range"] == [0.25, 0.5] and "H&E" in scope["stains"]
    assert sum(d["images"] for d in scope["data"]) == sum(p["fit"] for p in record["split"].values())
    assert {d["name"]: d["read_scale"] for d in scope["data"] if "read_scale" in d} == {
        f"{NAMES[source]}, training part": scale for source, scale in chosen.get("read_scales", {}).items()}
    assert SHIPPED["default"].stat().st_size == record["model_bytes"] < 10 * 1024 * 1024


def _recorded_run(tmp_path, monkeypatch, installed: bool = False):
    """A results file whose chosen model is a small real checkpoint in a work folder; the shipped
    model and curves redirected into tmp_path."""
    import bench.default_model as dm
    from cyseg.models import SHIPPED as shipped

    work = tmp_path / "work"
    work.mkdir(parents=True)
    model = work / "recipe.pt"
    torch.save({"training": {"best_epoch": 7}}, model)
    model.with_suffix(".curves.png").write_bytes(b"png")
    results = tmp_path / "default_model.json"
    results.write_text(json.dumps({"chosen": "recipe", "installed": installed, "model_bytes": model.stat().st_size,
                                   "candidates": {"recipe": {"best_epoch": 7}}}))
    monkeypatch.setattr(dm, "RESULTS", results)
    monkeypatch.setattr(dm, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    monkeypatch.setitem(shipped, "default", tmp_path / "default.pt")
    return dm, work, model, results


def test_install_recorded_ships_the_chosen_model(tmp_path, monkeypatch):
    dm, work, model, results = _recorded_run(tmp_path, monkeypatch)
    dm.install_recorded(work)
    assert (tmp_path / "default.pt").read_bytes() == model.read_bytes()
    record = json.loads(results.read_text())
    assert record["installed"] and record["install_run"]["from"] == str(model)


def test_install_recorded_refuses_another_model(tmp_path, monkeypatch):
    dm, work, model, _ = _recorded_run(tmp_path, monkeypatch)
    torch.save({"training": {"best_epoch": 8}}, model)
    with pytest.raises(SystemExit, match="stopped at epoch 8, not the recorded one"):
        dm.install_recorded(work)
    model.write_bytes(b"other")
    with pytest.raises(SystemExit, match=r"is not the model .* chose"):
        dm.install_recorded(work)
    assert not (tmp_path / "default.pt").exists()
    dm, work, _, _ = _recorded_run(tmp_path / "again", monkeypatch, installed=True)
    with pytest.raises(SystemExit, match="already installed"):
        dm.install_recorded(work)


def test_weights_digest_tells_a_single_changed_weight(tmp_path):
    from bench.default_model import weight_difference, weights_digest

    weights = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.zeros(2),
               "bn.num_batches_tracked": torch.tensor(3)}
    first, same, other = (tmp_path / f"{n}.pt" for n in ("first", "same", "other"))
    torch.save({"state_dict": weights, "training": {"finished": 1}}, first)
    torch.save({"state_dict": {k: v.clone() for k, v in weights.items()}, "training": {"finished": 2}}, same)
    changed = {k: v.clone() for k, v in weights.items()}
    changed["a.weight"][1, 2] += 0.25
    torch.save({"state_dict": changed}, other)
    assert weights_digest(first) == weights_digest(same)  # the weights decide, not the rest of the file
    assert weight_difference(same, first) == 0.0
    assert weights_digest(other) != weights_digest(first)
    assert weight_difference(other, first) == pytest.approx(0.25)


def test_rebuild_refuses_a_recipe_changed_since_the_record(tmp_path, monkeypatch):
    dm, work, _, results = _recorded_run(tmp_path, monkeypatch, installed=True)
    (tmp_path / "default.pt").write_bytes(b"x" * 5)
    record = json.loads(results.read_text())
    results.write_text(json.dumps(record | {"model_bytes": 5, "candidates": {"recipe": {"train_args": "--epochs 1"}}}))
    with pytest.raises(SystemExit, match="the recipe 'recipe' changed since"):
        dm.rebuild(work)
    monkeypatch.setitem(dm.CANDIDATES, "recipe", ["--epochs", "1"])
    same_options = {"train_args": dm.shlex.join([*dm.BASE, "--epochs", "1"]), "read_scales": {"urothelial": 0.5}}
    results.write_text(json.dumps(record | {"model_bytes": 5, "candidates": {"recipe": same_options}}))
    with pytest.raises(SystemExit, match="the recipe 'recipe' changed since"):  # read at other scales now
        dm.rebuild(work)
    results.write_text(json.dumps(record | {"model_bytes": 6}))
    with pytest.raises(SystemExit, match="does not describe"):
        dm.rebuild(work)
    assert (work / "recipe.pt").is_file()  # refused before the work folder is emptied


def test_the_rebuild_record_speaks_only_for_the_weights_it_rebuilt():
    from bench.default_model import REBUILD, weights_digest

    record = json.loads(REBUILD.read_text())
    assert record["benchmark"] == "default_model_rebuild"
    assert record["identical"] == (record["weights_sha256"]["rebuilt"] == record["weights_sha256"]["shipped"])
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    if record["weights_sha256"]["shipped"] == weights_digest(SHIPPED["default"]):
        assert ("its weights equal the shipped model's bit for bit" in docs) == record["identical"]
    else:  # a rebuild of an earlier shipped model: the docs claim nothing for this one
        assert "Not measured for the shipped weights yet" in docs and "bit for bit (SHA-256" not in docs


def test_recalibrate_refuses_a_record_of_another_model_before_emptying_its_work_folder(tmp_path, monkeypatch):
    dm, work, _, _ = _recorded_run(tmp_path, monkeypatch, installed=False)
    with pytest.raises(SystemExit, match="does not describe"):
        dm.recalibrate(work)
    assert (work / "recipe.pt").is_file()


def test_a_resumed_candidate_continues_its_training_under_its_name_and_says_so(tmp_path, monkeypatch):
    """With --resume a candidate's training goes through `resumable_train` (kept or continued, named
    as a fresh one), and its entry carries what ran before; a resume without the interrupted run's note
    is refused before anything is trained."""
    import sys

    import bench.default_model as dm

    calls = []

    def resumable(data, model, seed, options, **kwargs):
        calls.append((model, kwargs))
        return {"train_cpu_s": 60.0, "train_wall_s": 30.0, "resumed": {"kept": False, "epochs": 12, "wall_s": 600.0}}

    monkeypatch.setattr(dm, "resumable_train", resumable)
    monkeypatch.setattr(dm, "best_epoch", lambda model: 100)
    scores = {"wbc": {"cell": {"dice": 0.9, "object_f1": 0.8}}}
    monkeypatch.setattr(dm, "score", lambda model, parts, part, work: scores)
    parts = {"wbc": dm.Parts([tmp_path / "fit"], tmp_path / "val", tmp_path / "test", {})}
    label = next(iter(dm.CANDIDATES))
    entry = dm.train_candidate(label, tmp_path, parts, [], resume=True)
    [(model, kwargs)] = calls
    assert model == tmp_path / f"{label}.pt" and kwargs["resume"] is True and kwargs["val"] == [tmp_path / "val"]
    assert kwargs["name"].startswith("cyseg default v2") and kwargs["threads"] == dm.THREADS
    assert entry["resumed"] == {"kept": False, "epochs": 12, "wall_s": 600.0}
    assert entry["val_merit"] == pytest.approx(0.85) and entry["train_cpu_s"] == 60.0
    monkeypatch.setattr(sys, "argv", ["default_model.py", "--resume", "--work", str(tmp_path / "none")])
    monkeypatch.setattr(dm, "SHARED_DATA", tmp_path)
    with pytest.raises(SystemExit, match="holds no interrupted run of this benchmark"):
        dm.main()
    assert len(calls) == 1


def test_each_candidate_reads_its_sources_at_the_scales_it_declares(shared_data, tmp_path):
    """Every candidate gets the same split in a folder of its own; the one with read scales declares them
    in each of that source's folders (training, validation and test), and only there."""
    import bench.default_model as dm
    from segmenter.io.dataset import open_dataset

    parts = dm.candidate_parts(tmp_path)
    assert set(parts) == set(dm.CANDIDATES)
    [(label, scales)] = dm.READ_SCALES.items()
    for candidate, by_source in parts.items():
        for source, p in by_source.items():
            assert p.stems == parts[label][source].stems
            expected = scales.get(source, 1.0) if candidate == label else 1.0
            assert {open_dataset(f).read_scale for f in (*p.fit, p.val, p.test)} == {expected}
    assert scales == {"urothelial": 0.5}
