"""The shipped model: its recipe's data split (bench/default_model.py) and the provenance its file holds."""
from __future__ import annotations

import torch

from cyseg.models import SHIPPED


def test_recipe_holds_out_images_never_trained_on(shared_data):
    from bench.default_model import source_items

    items = source_items()
    assert {s: (len(train), len(held)) for s, (_, train, held) in items.items()} == {"miccai15": (13, 2), "wbc": (270, 30)}
    for _, train, held in items.values():
        assert not set(train) & set(held)
    assert source_items() == items  # the same split every time


def test_shipped_model_records_its_recipe():
    training = torch.load(SHIPPED["default"], map_location="cpu", weights_only=True)["training"]
    options = training["options"]
    assert options["colour"] and options["zoom"] == 0.5 and options["epochs"] == 40
    assert training["n_images"] == 283 and training["best_val_iou"] > 0.85
    assert "bench/default_model.py" in training["name"]
    assert SHIPPED["default"].stat().st_size < 10 * 1024 * 1024
