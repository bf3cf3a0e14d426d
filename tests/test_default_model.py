"""The shipped model: its recipe's three-way data split (bench/default_model.py) and the provenance
its file holds."""
from __future__ import annotations

import json

import torch
from conftest import REPO

from cyseg.models import SHIPPED


def test_recipe_splits_each_source_three_ways(shared_data):
    from bench.common import MICCAI_TEST
    from bench.default_model import source_items

    items = source_items()
    assert {s: (len(p.train), len(p.val), len(p.test)) for s, p in items.items()} == {
        "miccai15": (8, 2, 5), "wbc": (240, 30, 30)}
    assert items["miccai15"].test == list(MICCAI_TEST)  # the accuracy benchmark's test tiles: the figures compare
    for split in items.values():
        assert not set(split.train) & set(split.val) and not set(split.train) & set(split.test)
        assert not set(split.val) & set(split.test)
    assert source_items() == items  # the same split every time


def test_shipped_model_records_its_recipe():
    training = torch.load(SHIPPED["default"], map_location="cpu", weights_only=True)["training"]
    record = json.loads((REPO / "bench" / "results" / "default_model.json").read_text())
    chosen = record["candidates"][record["chosen"]]
    options = training["options"]
    assert options["epochs"] == 40
    assert options["colour"] == ("--colour" in chosen["train_args"])
    assert training["n_images"] == 248 and training["best_epoch"] == chosen["best_epoch"]
    assert training["threshold"]["chosen_on"] == "validation images"
    assert "bench/default_model.py" in training["name"]
    assert SHIPPED["default"].stat().st_size == record["model_bytes"] < 10 * 1024 * 1024
