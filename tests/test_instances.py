"""Instances (issue 18, items 2 and 3, on crops): distance targets, the seeded watershed, nucleus ->
cell assignment, instance labels in datasets, `cyseg train --instances`, label images and QuPath
cell objects from `cyseg segment`, and instance scores from `cyseg evaluate`."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, invoke
from skimage.morphology import h_maxima

from segmenter.cells import cell_features
from segmenter.errors import DatasetError, ModelFileError
from segmenter.instances import MIN_WIDTHS, balanced_score, candidate_areas, instance_labels
from segmenter.io.dataset import open_dataset
from segmenter.recalibrate import chosen_with_tta
from transforms.instances import (
    Separation,
    assign_nuclei,
    connected_instances,
    distance_target,
    drop_small,
    joined_seeds,
    markers,
    separate,
)
from unet import load_segmenter


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    """A filled disc as a boolean image."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def touching_discs(shape: tuple[int, int] = (80, 120)) -> np.ndarray:
    """Two discs of radius 24 whose centres are 44 px apart (they share a neck), as labels 1 and 2."""
    left, right = disc(shape, (40, 36), 24), disc(shape, (40, 80), 24)
    labels = np.zeros(shape, np.int32)
    labels[left] = 1
    labels[right & ~left] = 2
    return labels


def test_the_distance_target_is_one_at_each_centre_and_falls_to_the_edges():
    labels = touching_discs()
    target = distance_target(labels)
    assert target.dtype == np.float32 and target.shape == labels.shape
    assert (target[labels == 0] == 0).all() and (target[labels > 0] > 0).all()
    for i in (1, 2):
        assert target[labels == i].max() == pytest.approx(1.0)
    assert target[40, 36] > 0.9 and target[40, 80] > 0.9
    assert target[40, 58] < 0.2  # the neck between them: each instance's own boundary
    assert target[40, 13] < 0.1  # the outer edge
    assert (distance_target(np.zeros((5, 5), np.int32)) == 0).all()


def test_the_split_separates_touching_discs_that_connected_components_merge():
    labels = touching_discs()
    foreground = labels > 0
    assert connected_instances(foreground).max() == 1
    split = separate(foreground, distance_target(labels), Separation())
    assert split.max() == 2
    assert len(np.unique(split[disc(labels.shape, (40, 30), 8)])) == 1
    assert np.unique(split[disc(labels.shape, (40, 30), 8)]) != np.unique(split[disc(labels.shape, (40, 86), 8)])
    assert (split[foreground] > 0).all() and (split[~foreground] == 0).all()


def test_markers_keep_the_peaks_that_stand_out_by_h_one_per_object():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    # two bumps on a plateau at 0.5: peaks 0.95 and 0.75 (heights 0.45 and 0.25)
    profile = np.maximum(np.maximum(0.95 - 3 * np.abs(x - 0.25), 0.75 - 3 * np.abs(x - 0.75)), 0.5)
    ridge = np.tile(profile, (5, 1))
    foreground = ridge > 0
    assert markers(foreground, ridge, 0.2).max() == 2 and markers(foreground, ridge, 0.3).max() == 1
    rng = np.random.default_rng(0)
    for _ in range(5):  # discs: one marker in each (the exact h-maxima may give one flat top twice)
        labels = np.zeros((96, 96), np.int32)
        for _ in range(30):
            new = disc(labels.shape, tuple(rng.integers(12, 84, 2)), int(rng.integers(8, 14)))
            if not (new & (labels > 0)).any():
                labels[new] = labels.max() + 1
        found = markers(labels > 0, distance_target(labels), 0.2)
        assert found.max() == labels.max() >= 3
        assert all(len(np.unique(found[labels == i])) == 2 for i in range(1, labels.max() + 1))
        assert connected_instances(h_maxima(distance_target(labels), 0.2) > 0).max() >= found.max()


def test_touching_discs_split_the_same_by_watershed_and_by_nearest_marker():
    labels = touching_discs()
    for grow in ("watershed", "nearest"):
        split = separate(labels > 0, distance_target(labels), Separation(grow=grow))
        assert split.max() == 2 and (split[labels > 0] > 0).all()
        assert (split == np.where(labels == 1, split[40, 30], np.where(labels == 2, split[40, 86], 0))).mean() > 0.98


def test_nearest_marker_growth_keeps_each_object_in_one_piece_around_a_bend():
    u = np.zeros((60, 60), bool)  # a U: two arms joined at the bottom
    u[:, :10] = u[50:, :] = u[:, 50:] = True
    seeds = np.zeros(u.shape, np.int32)
    seeds[:6, :10] = 1  # the top of the left arm
    seeds[50:, 25:35] = 2  # the middle of the bottom
    flat = np.where(u, 0.5, 0).astype(np.float32)
    # straight across the gap, the top of the right arm is nearer the left arm's seed than the bottom's
    assert np.hypot(50 - 9, 0) < np.hypot(50 - 34, 50 - 0)
    split = separate(u, flat, Separation(grow="nearest"), seeds=seeds)
    assert split[0, 55] == split[55, 30] != split[0, 5]
    for i in np.unique(split[split > 0]):
        assert cv2.connectedComponents((split == i).astype(np.uint8), connectivity=8)[0] == 2


def test_nuclei_seed_the_cells_and_a_seedless_component_stays_one_object():
    labels = touching_discs((80, 200))
    lone = disc(labels.shape, (40, 160), 20)
    foreground = (labels > 0) | lone
    flat = np.where(foreground, 0.5, 0).astype(np.float32)  # a distance map with no peaks to split on
    nuclei = np.zeros(labels.shape, np.int32)
    nuclei[disc(labels.shape, (40, 30), 6)] = 7
    nuclei[disc(labels.shape, (40, 86), 6)] = 9
    cells = separate(foreground, flat, Separation(), seeds=nuclei)
    assert cells.max() == 3
    assert cells[40, 30] != cells[40, 86] and cells[40, 160] not in (0, cells[40, 30], cells[40, 86])


def test_nuclei_closer_than_join_diameters_seed_one_cell_and_farther_ones_their_own():
    nuclei = np.zeros((80, 200), np.int32)
    nuclei[disc(nuclei.shape, (40, 24), 6)] = 3  # two lobes of one nucleus, a gap of about half a diameter
    nuclei[disc(nuclei.shape, (40, 42), 6)] = 5
    nuclei[disc(nuclei.shape, (40, 150), 6)] = 8  # another cell's nucleus, about 9 diameters away
    seeds = joined_seeds(nuclei, 2.0)
    assert seeds[40, 24] == seeds[40, 42] != seeds[40, 150] and seeds[40, 150] > 0
    assert np.array_equal(seeds > 0, nuclei > 0)  # the seeds are the nuclei's own pixels
    assert len(np.unique(joined_seeds(nuclei, 0.25))) == 4  # across a quarter of a diameter none join
    assert joined_seeds(nuclei, 0.0) is nuclei
    nuclei[disc(nuclei.shape, (40, 60), 6)] = 9  # a chain: each gap about half a diameter
    assert len(np.unique(joined_seeds(nuclei, 1.0)[nuclei > 0])) == 2


def test_nuclei_of_another_component_never_link_two_of_a_components_nuclei():
    nuclei = np.zeros((60, 200), np.int32)
    inside = np.zeros(nuclei.shape, bool)
    inside[5:15, :] = True  # one long cell: nuclei at its two ends, far apart
    inside[30:40, 20:180] = True  # a clump below: a chain of close nuclei from end to end
    nuclei[disc(nuclei.shape, (10, 20), 4)] = 1
    nuclei[disc(nuclei.shape, (10, 180), 4)] = 2
    for k, x in enumerate(range(25, 176, 10)):
        nuclei[disc(nuclei.shape, (35, x), 4)] = 3 + k
    nuclei = np.where(inside, nuclei, 0)
    assert joined_seeds(nuclei, 3.0)[10, 20] == joined_seeds(nuclei, 3.0)[10, 180]  # linked through the chain
    seeds = joined_seeds(nuclei, 3.0, inside)
    assert seeds[10, 20] != seeds[10, 180] and seeds[35, 25] == seeds[35, 175] > 0


def test_a_cell_with_a_lobed_nucleus_stays_whole_when_its_lobes_are_joined():
    labels = touching_discs((80, 200))
    foreground = labels > 0
    flat = np.where(foreground, 0.5, 0).astype(np.float32)
    nuclei = np.zeros(labels.shape, np.int32)
    nuclei[disc(labels.shape, (40, 28), 5)] = 1  # the left cell's nucleus in two lobes
    nuclei[disc(labels.shape, (40, 40), 5)] = 2
    nuclei[disc(labels.shape, (40, 86), 6)] = 3
    split = separate(foreground, flat, Separation(nucleus_seeds=True), seeds=nuclei)
    assert split.max() == 3  # each lobe took a share of its cell
    joined = separate(foreground, flat, Separation(nucleus_seeds=True, join=2.0), seeds=nuclei)
    assert joined.max() == 2 and joined[40, 28] == joined[40, 40] != joined[40, 86]


def test_a_join_out_of_range_is_refused_with_its_name():
    with pytest.raises(ValueError, match="join -1"):
        Separation(join=-1).check()
    assert "nuclei joined across 2 diameters as seeds" in Separation(nucleus_seeds=True, join=2).describe()
    old_file = {"h": 0.3, "grow": "nearest", "nucleus_seeds": True, "marks": "peaks", "contour": 0.5}
    assert Separation(**old_file).join == 0  # separations written before joins existed


def test_drop_small_removes_the_specks_and_renumbers_the_rest_in_order():
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 3  # 25 px
    labels[10:12, 10:12] = 1  # 4 px: a speck at 5
    labels[15:20, 0:4] = 7  # 20 px
    kept = drop_small(labels, 5)
    assert kept.dtype == np.int32 and sorted(np.unique(kept).tolist()) == [0, 1, 2]
    assert (kept[0:5, 0:5] == 1).all() and (kept[15:20, 0:4] == 2).all() and not kept[10:12, 10:12].any()
    assert (drop_small(labels, 0) == labels).all() and not drop_small(labels, 26).any()


def test_each_nucleus_goes_to_the_cell_it_overlaps_most():
    cells = np.zeros((10, 20), np.int32)
    cells[:, :10], cells[:, 10:] = 1, 2
    nuclei = np.zeros_like(cells)
    nuclei[2:5, 7:12] = 4  # 3 columns in cell 1, 2 in cell 2
    nuclei[6:8, 14:16] = 5
    cells[0, 19] = 0
    nuclei[0, 19] = 6  # outside every cell
    assert assign_nuclei(cells, nuclei) == {4: 1, 5: 2}


def test_cells_become_qupath_cell_objects_with_their_nucleus():
    cells = touching_discs()
    nuclei = np.zeros_like(cells)
    nuclei[disc(cells.shape, (40, 30), 6)] = 1
    nuclei[disc(cells.shape, (40, 86), 5)] = 2
    nuclei[disc(cells.shape, (30, 80), 3)] = 3  # a second, smaller nucleus in cell 2
    probs = np.full(cells.shape, 0.8, np.float32)
    features = cell_features(cells, nuclei, probs, probs)
    kinds = [f["properties"]["objectType"] for f in features]
    assert kinds == ["cell", "cell", "detection"]
    from shapely.geometry import shape

    for feature in features[:2]:
        props = feature["properties"]
        assert props["classification"]["name"] == "cell"
        assert shape(feature["geometry"]).contains(shape(feature["nucleusGeometry"]))
        assert props["measurements"]["Cell: Area px^2"] == pytest.approx(shape(feature["geometry"]).area)
        assert props["measurements"]["Cell: Mean probability"] == pytest.approx(0.8)
        assert "Nucleus: Area px^2" in props["measurements"]
    assert shape(features[1]["nucleusGeometry"]).area > shape(features[2]["geometry"]).area
    assert features[2]["properties"]["classification"]["name"] == "nucleus" and "nucleusGeometry" not in features[2]


# ---------------------------------------------------------------- datasets and the command line

def write_discs(root: Path, n: int, seed: int, instances: bool = True, manifest: dict | None = None) -> Path:
    """A one-class dataset of 64x64 crops, each holding pairs of touching dark discs, with their
    instance labels in masks_instance/."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks") + (("masks_instance",) if instances else ()):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        labels = np.zeros((64, 64), np.uint16)
        for pair in range(2):
            y, x = int(rng.integers(16, 48)), int(rng.integers(20, 44))
            for k, dx in enumerate((-7, 7)):
                labels[disc(labels.shape, (y, x + dx), 9) & (labels == 0)] = 2 * pair + k + 1
        image = np.full((64, 64, 3), 225, np.uint8)
        image[labels > 0] = (80, 50, 130)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"d{i:02d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"d{i:02d}.png"), ((labels > 0) * 255).astype(np.uint8))
        if instances:
            cv2.imwrite(str(root / "masks_instance" / f"d{i:02d}.png"), labels)
    (root / "dataset.json").write_text(json.dumps({"format": "cyseg-dataset/1", "items": {}, **(manifest or {})}))
    return root


def test_a_dataset_finds_its_instance_labels_and_names_a_missing_one(tmp_path):
    root = write_discs(tmp_path / "d", 2, 0)
    items = open_dataset(root).items
    assert items[0].instances == {"foreground": root / "masks_instance" / "d00.png"}
    (root / "masks_instance" / "d01.png").unlink()
    assert open_dataset(root).items[0].instances == {}  # undeclared: only when every image has them
    (root / "dataset.json").write_text(json.dumps({"instances": True}))
    with pytest.raises(DatasetError, match=r"says foreground has instance labels but .*d01.png is missing"):
        open_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"instances": ["nucleus"]}))
    with pytest.raises(DatasetError, match=r'"instances" must be true, false or a list'):
        open_dataset(root)


def test_train_instances_without_instance_labels_is_one_line(tmp_path):
    data = write_discs(tmp_path / "plain", 2, 0, instances=False)
    result = invoke(["train", data, "--instances", "--out", tmp_path / "m.pt", *TINY])
    assert result.exit_code == 2
    assert "--instances given but no training dataset has instance labels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()


@pytest.fixture(scope="module")
def disc_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("discs")
    return {"train": write_discs(root / "train", 6, 0), "val": write_discs(root / "val", 2, 1)}


@pytest.fixture(scope="module")
def instance_model(tmp_path_factory, disc_sets) -> Path:
    out = tmp_path_factory.mktemp("instance_model") / "discs.pt"
    result = invoke(["-q", "train", disc_sets["train"], "--val", disc_sets["val"], "--instances", "--out", out,
                     *TINY, "--steps-per-epoch", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_an_instance_model_records_its_distance_channel_and_watershed(instance_model, caplog):
    content = torch.load(instance_model, map_location="cpu", weights_only=True)
    assert content["config"]["instances"] == ["foreground"]
    assert set(content["separation"]) == {"foreground"}
    assert content["training"]["separation"]["chosen_on"] == "validation images"
    seg = load_segmenter(instance_model, device="cpu")
    assert seg.n_outputs == 2 and seg.separation == content["separation"]
    assert seg.predict(np.zeros((64, 64, 3), np.uint8)).shape == (2, 64, 64)


def test_an_instance_model_chooses_its_least_object_area_on_validation_images(instance_model):
    content = torch.load(instance_model, map_location="cpu", weights_only=True)
    seg = load_segmenter(instance_model, device="cpu")
    assert content["training"]["separation"]["foreground"]["min_area"] == content["min_area"]["cell"]
    assert len(MIN_WIDTHS) > 1 and content["min_area"]["cell"] in candidate_areas(seg, "cell")
    assert seg.min_areas(None) == {"cell": content["min_area"]["cell"]}
    result = invoke(["info", instance_model])
    assert f"min area    cell {content['min_area']['cell']:g} px²" in result.stdout


def test_info_names_a_one_class_models_objects_by_their_label_on_every_line(instance_model):
    result = invoke(["info", instance_model])
    assert "finds       cell; one object per cell (instances)" in result.stdout
    assert "separation  cell: h " in result.stdout and "foreground" not in result.stdout
    card = json.loads(invoke(["info", instance_model, "--json"]).stdout)
    assert card["instances"] == ["cell"] and set(card["separation"]) == {"cell"}


def test_a_refit_adopts_the_settings_its_validated_model_chose(instance_model, disc_sets, tmp_path):
    out = tmp_path / "refit.pt"
    result = invoke(["-q", "train", disc_sets["train"], disc_sets["val"], "--instances", "--out", out, *TINY,
                     "--settings-from", instance_model])
    assert result.exit_code == 0, result.output + repr(result.exception)
    refit, validated = (torch.load(m, map_location="cpu", weights_only=True) for m in (out, instance_model))
    for key in ("threshold", "separation", "min_area"):
        assert refit[key] == validated[key]
    training = refit["training"]
    assert training["options"]["settings_from"] == str(instance_model)
    assert training["threshold"]["chosen_on"] == f"validation images of {instance_model}"
    assert training["separation"]["chosen_on"] == f"validation images of {instance_model}"
    assert training["settings_from"]["from"] == str(instance_model)


def test_settings_from_a_model_of_other_classes_or_beside_a_threshold_is_one_line(instance_model, tiny_model,
                                                                                  disc_sets, tmp_path):
    out = tmp_path / "refit.pt"
    cases = {(tiny_model, "--instances"): "give a model trained with the same --classes, --instances and --contours",
             (instance_model, "--threshold", "0.5", "--instances"): "both set the threshold; give one of them",
             (disc_sets["train"] / "dataset.json", "--instances"): "is not a PyTorch file"}
    for (model, *options), message in cases.items():
        result = invoke(["train", disc_sets["train"], "--out", out, *TINY, "--settings-from", model, *options])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists()


def test_calibrate_chooses_the_settings_anew_and_keeps_the_weights_and_the_source(instance_model, disc_sets,
                                                                                  tmp_path):
    before = instance_model.read_bytes()
    out = tmp_path / "tta.pt"
    result = invoke(["calibrate", instance_model, disc_sets["val"], "--tta", "--out", out])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.startswith("settings chosen on 2 validation images") and "threshold   cell: " in result.stdout
    assert instance_model.read_bytes() == before
    new, old = (torch.load(m, map_location="cpu", weights_only=True) for m in (out, instance_model))
    assert all(torch.equal(new["state_dict"][k], old["state_dict"][k]) for k in old["state_dict"])
    where = f"validation images ({disc_sets['val']}), with test-time augmentation"
    record = new["training"]["recalibrated"]
    assert record["tta"] is True and record["chosen_on"] == where and record["n_images"] == 2
    assert record["replaced"]["separation"] == old["separation"] and record["replaced"]["min_area"] == old["min_area"]
    assert new["training"]["threshold"]["chosen_on"] == where == new["training"]["separation"]["chosen_on"]
    assert new["training"]["best_epoch"] == old["training"]["best_epoch"]
    assert f"settings    chosen on the {where}" in invoke(["info", out]).stdout
    refit = tmp_path / "refit.pt"
    assert invoke(["-q", "train", disc_sets["train"], "--instances", "--out", refit, *TINY,
                   "--settings-from", out]).exit_code == 0
    assert torch.load(refit, weights_only=True)["training"]["threshold"]["chosen_on"] == f"{where} of {out}"
    assert chosen_with_tta(load_segmenter(refit)) and not chosen_with_tta(load_segmenter(instance_model))


def test_a_model_run_in_another_view_than_its_settings_were_chosen_in_says_so(instance_model, disc_sets, tmp_path,
                                                                              caplog):
    tuned = tmp_path / "tta.pt"
    assert invoke(["-q", "calibrate", instance_model, disc_sets["val"], "--tta", "--out", tuned]).exit_code == 0
    cases = {(instance_model, "--tta"): "chosen without --tta; 'cyseg calibrate MODEL VALDIR --tta",
             (tuned,): "chosen with test-time augmentation; add --tta", (instance_model,): None, (tuned, "--tta"): None}
    for (model, *options), message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="segmenter.recalibrate"):
            result = invoke(["evaluate", model, disc_sets["val"], "--out", tmp_path / "r", "--no-sweep", *options])
        assert result.exit_code == 0
        assert message in caplog.text if message else "were chosen" not in caplog.text, caplog.text


def test_recalibration_predicts_in_the_view_asked_and_leaves_the_models_own(instance_model, disc_sets):
    from segmenter.recalibrate import recalibrate

    seg = load_segmenter(instance_model, device="cpu")
    views, predict = [], seg.predict

    def spy(image, **kwargs):
        views.append(seg.inference["tta"] if kwargs.get("tta") is None else kwargs["tta"])
        return predict(image, **kwargs)

    seg.predict = spy
    for tta in (True, False):
        views.clear()
        record = recalibrate(seg, [open_dataset(disc_sets["val"])], tta)
        assert views == [tta] * 2 and record["tta"] is tta and seg.inference["tta"] is False


def test_calibrate_on_a_missing_or_foreign_folder_is_one_line_and_writes_nothing(instance_model, disc_sets,
                                                                                tmp_path):
    named = write_discs(tmp_path / "named", 2, 2, manifest={"classes": ["nucleus"]})
    out = tmp_path / "out.pt"
    cases = {tmp_path / "nowhere": f"dataset folder {tmp_path / 'nowhere'} does not exist",
             named: f"{named} declares classes nucleus but the model predicts one unnamed foreground"}
    for folder, message in cases.items():
        result = invoke(["calibrate", instance_model, folder, "--out", out])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not out.exists() and not list(tmp_path.glob("*.pt*"))


def test_object_sizes_are_recorded_in_image_pixels_whatever_the_working_resolution(disc_sets, tmp_path):
    sizes = {}
    for resolution in ("1", "0.5"):
        out = tmp_path / f"r{resolution}.pt"
        result = invoke(["-q", "train", disc_sets["train"], "--out", out, *TINY, "--epochs", "1",
                         "--steps-per-epoch", "1", "--resolution", resolution])
        assert result.exit_code == 0, result.output + repr(result.exception)
        sizes[resolution] = load_segmenter(out, device="cpu").training_info["object_size_px_by_class"]["cell"]
    assert sizes["0.5"] == pytest.approx(sizes["1"], rel=0.05)


def enlarged(source: Path, root: Path, factor: int) -> Path:
    """A copy of a `write_discs` dataset with its images, masks and instance labels `factor` times larger."""
    for sub in ("images", "masks", "masks_instance"):
        (root / sub).mkdir(parents=True)
        for path in (source / sub).iterdir():
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / sub / path.name), cv2.resize(image, None, fx=factor, fy=factor,
                                                               interpolation=cv2.INTER_NEAREST))
    (root / "dataset.json").write_text((source / "dataset.json").read_text())
    return root


def test_a_class_from_sources_of_two_scales_takes_its_specks_from_the_smaller(disc_sets, tmp_path):
    """Pooled, the large source's objects hold most foreground and would set the speck size; every
    object of the small source would then be a speck."""
    large = enlarged(disc_sets["train"], tmp_path / "large", 4)
    out = tmp_path / "two.pt"
    result = invoke(["-q", "train", disc_sets["train"], large, "--out", out, *TINY, "--epochs", "1",
                     "--steps-per-epoch", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    info = load_segmenter(out, device="cpu").training_info
    by_folder = info["object_size_px_by_folder"]
    small_size = by_folder[str(disc_sets["train"].resolve())]["cell"]
    assert by_folder[str(large.resolve())]["cell"] == pytest.approx(4 * small_size, rel=0.05)
    assert info["object_size_px_by_class"] == {"cell": small_size}


def test_the_separation_score_weighs_each_validation_source_the_same():
    """Three images of one source found perfectly and one of another found not at all: 0.5, not 0.75."""
    objects = np.zeros((16, 16), np.int32)
    objects[2:8, 2:8] = 1
    missed = np.zeros_like(objects)
    found = [(objects, objects, 0)] * 3 + [(missed, objects, 1)]
    assert balanced_score(found, 0.0) == (pytest.approx(0.5), pytest.approx(0.5))
    assert balanced_score(found[:3], 0.0) == (1.0, 1.0)
    assert balanced_score(found, 100.0) == (0.0, 0.0)  # the 36-px objects are under the least area


def test_instance_labels_drop_the_objects_under_the_models_least_area(instance_model):
    seg = load_segmenter(instance_model, device="cpu")
    seg.min_area["cell"] = 50.0
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 10:30, 10:30] = 1  # 400 px: an object
    mask[0, 50:55, 50:55] = 1  # 25 px: a speck
    probs = np.concatenate([mask, mask], axis=0).astype(np.float32)
    assert instance_labels(seg, mask, probs)["foreground"].max() == 2
    kept = instance_labels(seg, mask, probs, min_areas=seg.min_areas(None))["foreground"]
    assert kept.max() == 1 and kept[20, 20] == 1 and not kept[52, 52]


def test_a_model_file_with_a_least_area_for_an_unknown_class_is_refused(instance_model, tmp_path):
    content = torch.load(instance_model, map_location="cpu", weights_only=True)
    content["min_area"] = {"nucleus": 10.0}
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="minimum object area is given for 'nucleus'"):
        load_segmenter(tmp_path / "bad.pt", device="cpu")


def test_the_end_of_instance_training_predicts_each_validation_image_once(disc_sets, tmp_path, monkeypatch):
    """The threshold sweep's predictions are reused to choose the separation."""
    import segmenter.training as training
    from segmenter.base import Segmenter

    predicted: list[tuple[int, ...]] = []
    real_finish, real_predict = training._finish, Segmenter.predict

    def counting_finish(*args, **kwargs):
        monkeypatch.setattr(Segmenter, "predict", lambda self, image, *a, **k: predicted.append(image.shape)
                            or real_predict(self, image, *a, **k))
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(training, "_finish", counting_finish)
    result = invoke(["-q", "train", disc_sets["train"], "--val", disc_sets["val"], "--instances",
                     "--out", tmp_path / "m.pt", *TINY, "--epochs", "1", "--steps-per-epoch", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(predicted) == len(open_dataset(disc_sets["val"]))


def test_a_plain_model_file_has_no_instance_keys(tiny_model):
    content = torch.load(tiny_model, map_location="cpu", weights_only=True)
    assert "instances" not in content["config"] and "separation" not in content


def test_segment_writes_label_images_and_cell_objects(instance_model, disc_sets, tmp_path):
    out = tmp_path / "seg"
    result = invoke(["segment", instance_model, disc_sets["val"], "--out", out, "--device", "cpu", "--min-area", "0"])
    assert result.exit_code == 0, result.output
    for stem in ("d00", "d01"):
        labels = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and ((labels > 0) == (mask > 0)).all()
        features = json.loads((out / "geojson" / f"{stem}.geojson").read_text())["features"]
        assert len(features) == len(np.unique(labels[labels > 0]))
        for feature in features:
            props = feature["properties"]
            assert props["objectType"] == "cell" and props["classification"]["name"] == "cell"
            assert set(props["measurements"]) == {"Cell: Area px^2", "Cell: Mean probability"}


def test_segment_label_images_leave_out_the_objects_its_polygons_drop(instance_model, disc_sets, tmp_path):
    out = tmp_path / "seg"
    result = invoke(["segment", instance_model, disc_sets["val"], "--out", out, "--device", "cpu",
                     "--min-area", "1000000"])
    assert result.exit_code == 0, result.output
    labels = cv2.imread(str(out / "labels" / "d00.png"), cv2.IMREAD_UNCHANGED)
    assert cv2.imread(str(out / "masks" / "d00.png"), cv2.IMREAD_UNCHANGED).any() and not labels.any()
    assert json.loads((out / "geojson" / "d00.geojson").read_text())["features"] == []


def test_evaluate_reports_instance_scores(instance_model, disc_sets, tmp_path):
    result = invoke(["evaluate", instance_model, disc_sets["val"], "--out", tmp_path / "ev", "--no-sweep",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "object F1 " in result.stdout and "AJI " in result.stdout
    with open(tmp_path / "ev" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"object_f1", "aji", "pq", "dq", "sq", "object_dice", "object_hausdorff"} <= set(rows[0])
    assert sum(int(r["objects_tp"]) + int(r["objects_fn"]) for r in rows) == 8  # two pairs of discs per image
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())["instances"]
    assert 0 <= summary["object_f1_mean"] <= 1 and 0 <= summary["aji_mean"] <= 1
    assert summary["object_f1_mean"] == pytest.approx(np.mean([float(r["object_f1"]) for r in rows]))


def test_evaluate_counts_each_kind_and_prints_them_when_objects_go_unmatched(instance_model, disc_sets, tmp_path):
    result = invoke(["evaluate", instance_model, disc_sets["val"], "--out", tmp_path / "ev", "--no-sweep",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "ev" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for side in ("fn", "fp"):
        columns = [c for c in rows[0] if c.startswith(f"objects_{side}_")]
        assert len(columns) == 4
        assert all(sum(int(r[c]) for c in columns) == int(r[f"objects_{side}"]) for r in rows)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())["instances"]
    unmatched = summary["objects_fn"] + summary["objects_fp"]
    line = next((t for t in result.stdout.splitlines() if t.startswith("unmatched true objects: ")), None)
    assert (line is not None) == (unmatched > 0)
    if line:
        assert f"{summary['objects_fn_merged']} merged" in line and f"{summary['objects_fp_spurious']} spurious" in line


def test_evaluate_names_the_images_that_annotate_nothing_and_scores_the_others_apart(tiny_model, tmp_path):
    data = write_discs(tmp_path / "d", 3, 4)
    for sub in ("masks", "masks_instance"):
        cv2.imwrite(str(data / sub / "d00.png"), np.zeros((64, 64), np.uint8))
    result = invoke(["evaluate", tiny_model, data, "--out", tmp_path / "ev", "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "ev" / "per_image.csv", newline="") as fh:
        dice = {r["image"]: float(r["dice"]) for r in csv.DictReader(fh)}
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_unannotated"] == 1
    assert summary["dice_mean_annotated"] == pytest.approx(np.mean([dice["d01"], dice["d02"]]))
    assert "1 of 3 images annotate no foreground: each scores Dice 1 when nothing is predicted there" in result.stdout
    assert f"Dice over the others {summary['dice_mean_annotated']:.4f}" in result.stdout


def test_images_without_annotation_are_counted_apart_from_the_mean_of_the_others():
    from segmenter.evaluation import unannotated_images

    rows = [{"tp": 0, "fn": 0, "dice": 0.0}, {"tp": 5, "fn": 1, "dice": 0.8}, {"tp": 0, "fn": 3, "dice": 0.0},
            {"tp": 0, "fn": 0, "dice": 1.0}]
    assert unannotated_images(rows) == {"n_unannotated": 2, "dice_mean_annotated": pytest.approx(0.4)}
    assert unannotated_images(rows[:1]) == {"n_unannotated": 1, "dice_mean_annotated": None}
    assert unannotated_images(rows[1:2])["n_unannotated"] == 0


def test_evaluate_scores_connected_regions_and_warns_about_shared_ids(tiny_model, tmp_path, caplog):
    data = write_discs(tmp_path / "d", 2, 3)
    labels = cv2.imread(str(data / "masks_instance" / "d00.png"), cv2.IMREAD_UNCHANGED)
    labels[labels == 3] = 1  # one id over two separate discs
    cv2.imwrite(str(data / "masks_instance" / "d00.png"), labels)
    with caplog.at_level(logging.WARNING):
        result = invoke(["evaluate", tiny_model, data, "--out", tmp_path / "ev", "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1 instance id(s) in 1 instance mask(s) cover disconnected regions" in result.stderr
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["instances"]["objects_tp"] + summary["instances"]["objects_fn"] == 7


# ---------------------------------------------------------------- real data

def isbi_sets(source: Path, root: Path) -> dict[str, Path]:
    """ISBI 2014 (Pap smear) in the dataset layout, by symbolic links: cell + nucleus class masks and
    both instance label images; the first 12 images train, the last 4 validate."""
    stems = sorted(p.stem for p in (source / "images").glob("*.png"))
    sets = {}
    for part, chosen in (("train", stems[:12]), ("val", stems[-4:])):
        folder = root / part
        for sub in ("images", "masks", "masks_instance"):
            (folder / sub).mkdir(parents=True)
        for stem in chosen:
            (folder / "images" / f"{stem}.png").symlink_to(source / "images" / f"{stem}.png")
            (folder / "masks" / f"{stem}.png").symlink_to(source / "masks_3class" / f"{stem}.png")
            (folder / "masks_instance" / f"{stem}_cell.png").symlink_to(source / "cells_instance" / f"{stem}.png")
            (folder / "masks_instance" / f"{stem}_nucleus.png").symlink_to(source / "nuclei_instance" / f"{stem}.png")
        (folder / "dataset.json").write_text(json.dumps({"classes": ["cell", "nucleus"], "instances": True}))
        sets[part] = folder
    return sets


def test_isbi_cells_and_nuclei_train_segment_and_evaluate_as_instances(shared_data, tmp_path):
    source = shared_data / "isbi2014_synthetic"
    if not (source / "cells_instance").is_dir():
        pytest.skip("../shared/data/isbi2014_synthetic (cell and nucleus instances) not present")
    sets = isbi_sets(source, tmp_path)
    model = tmp_path / "isbi.pt"
    result = invoke(["-q", "train", sets["train"], "--val", sets["val"], "--instances", "--out", model, "--n", "8",
                     "--depth", "4", "--crop", "128", "--batch", "4", "--steps-per-epoch", "10", "--epochs", "4",
                     "--resolution", "0.5", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    seg = load_segmenter(model, device="cpu")
    assert seg.instance_classes == ("cell", "nucleus") and set(seg.separation) == {"cell", "nucleus"}
    sizes = seg.training_info["object_size_px_by_class"]  # each class's specks are judged by its own objects
    assert 0 < sizes["nucleus"] < sizes["cell"] and seg.smallest_object("nucleus") < seg.smallest_object("cell")

    result = invoke(["evaluate", model, sets["val"], "--out", tmp_path / "ev", "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "summary.json").read_text())["classes"]
    for name in ("cell", "nucleus"):
        scores = report[name]["instances"]
        assert 0 <= scores["object_f1_mean"] <= 1 and 0 <= scores["aji_mean"] <= 1 and 0 <= scores["pq_mean"] <= 1
        assert scores["objects_tp"] + scores["objects_fn"] > 0

    result = invoke(["segment", model, sets["val"], "--out", tmp_path / "seg", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    features = [f for path in sorted((tmp_path / "seg" / "geojson").iterdir())
                for f in json.loads(path.read_text())["features"]]
    assert any(f["properties"]["objectType"] == "cell" and "nucleusGeometry" in f for f in features)
    assert sorted(p.name for p in (tmp_path / "seg" / "labels").iterdir())[:2] == [
        f"{sorted(p.stem for p in (sets['val'] / 'images').iterdir())[0]}_{c}.png" for c in ("cell", "nucleus")]
