"""What a model was made for: recorded at training, printed by `cyseg info`, and checked before
segmenting, so that a fluorescence slide given to a brightfield model is refused in one line
instead of returning a slide-sized polygon."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke, write_rgb
from skimage.color import rgb2hed

from segmenter.scope import image_modality

SMALL = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "64", "--device", "cpu"]


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cyseg: error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in line, line
    return line


def dapi_like(ihc: np.ndarray) -> np.ndarray:
    """The IHC image's haematoxylin (the nuclear stain) as a DAPI-like image: blue nuclei on black."""
    hema = rgb2hed(ihc)[..., 0]
    out = np.zeros_like(ihc)
    out[..., 2] = np.round(255 * (hema - hema.min()) / (hema.max() - hema.min()))
    return out


def test_modality_of_brightfield_and_dark_background_images(ihc_image):
    assert image_modality(ihc_image) == "brightfield"
    assert image_modality(dapi_like(ihc_image)) == "fluorescence"


def test_info_says_what_a_trained_model_finds_and_was_made_for(tiny_model):
    result = invoke(["info", tiny_model])
    assert result.exit_code == 0, result.output
    assert "finds       cell; connected regions (no instances)" in result.stdout
    assert "modality    brightfield" in result.stdout and "/train (6 images)" in result.stdout
    card = json.loads(invoke(["info", tiny_model, "--json"]).stdout)
    assert card["scope"]["modality"] == ["brightfield"] and card["classes"] == ["cell"]


def test_info_of_the_shipped_default_says_what_it_finds():
    result = invoke(["info", "default"])
    assert result.exit_code == 0, result.output
    assert "finds       cell, nucleus; one object per cell, nucleus (instances, with contours)" in result.stdout
    assert "modality    brightfield" in result.stdout and "H&E" in result.stdout
    assert "MICCAI 2015 H&E nuclei, 20x training tiles (4 images)" in result.stdout


def test_a_v1_model_file_says_its_inputs_are_not_checked(tiny_model, tmp_path):
    import torch

    state = torch.load(tiny_model, map_location="cpu", weights_only=True)
    del state["training"]["scope"]  # as a file written before scopes existed
    torch.save(state, tmp_path / "v1.pt")
    result = invoke(["info", tmp_path / "v1.pt"])
    assert result.exit_code == 0, result.output
    assert "not recorded (a v1 model file): inputs are not checked against it" in result.stdout


def test_info_of_a_foreign_file_is_one_line(tmp_path):
    (tmp_path / "notes.pt").write_text("not a model")
    result = invoke(["info", tmp_path / "notes.pt"])
    assert result.exit_code == 2 and "notes.pt" in result.stderr


def test_dark_background_crops_are_refused_unless_allowed(tiny_model, ihc_image, tmp_path):
    for i in range(2):
        write_rgb(tmp_path / "fluo" / f"f{i}.png", dapi_like(ihc_image)[i * 128:i * 128 + 160, :192])
    result = invoke(["segment", tiny_model, tmp_path / "fluo", "--out", tmp_path / "out", "--device", "cpu"])
    one_line_error(result, "image f0.png looks like fluorescence", "trained on brightfield", "--allow-mismatch")
    assert not (tmp_path / "out").exists()
    result = invoke(["segment", tiny_model, tmp_path / "fluo", "--out", tmp_path / "out", "--device", "cpu",
                     "--allow-mismatch"])
    assert result.exit_code == 0 and (tmp_path / "out" / "masks" / "f0.png").is_file()


def test_the_real_fluorescence_slide_is_refused_and_a_brightfield_one_passes(tiny_model, shared_data, tmp_path):
    dapi, svs = shared_data / "slides" / "test3-DAPI-2-387.ndpi", shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not dapi.is_file() or not svs.is_file():
        pytest.skip("../shared/data/slides (the real NDPI fluorescence and SVS brightfield slides) not present")
    out = tmp_path / "dapi.geojson"
    result = invoke(["segment", tiny_model, dapi, "--out", out, *SMALL])
    one_line_error(result, "slide test3-DAPI-2-387.ndpi looks like fluorescence", "--allow-mismatch")
    assert not out.exists()
    allowed = invoke(["-q", "segment", tiny_model, dapi, "--out", out, "--window", "1000,1000,512,512",
                      "--allow-mismatch", *SMALL])
    assert allowed.exit_code == 0 and "segmenting anyway (--allow-mismatch)" in allowed.stderr and out.is_file()
    bright = invoke(["-q", "segment", tiny_model, svs, "--out", tmp_path / "svs.geojson", "--window",
                     "0,0,512,512", *SMALL])
    assert bright.exit_code == 0, bright.output
    assert json.loads((tmp_path / "svs.geojson").read_text())["type"] == "FeatureCollection"
    assert np.isfinite(json.loads((tmp_path / "svs.geojson").read_text())["properties"]["summary"]["seconds"])
