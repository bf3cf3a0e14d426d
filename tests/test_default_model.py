"""The shipped model: its recipe's three-way data split per source (bench/default_model.py) and the
provenance and scope its file holds."""
from __future__ import annotations

import json

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


def test_shipped_model_records_its_recipe_and_scope():
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
    assert SHIPPED["default"].stat().st_size == record["model_bytes"] < 10 * 1024 * 1024
