"""`cyseg suggest`: uncertainty measures and the diverse greedy choice (math), the real CLI on a
dataset folder and on a slide (annotated regions left out), the upload of ROIs to the local Cytomine
test server (journalled, once), and every bad input as one line with nothing written."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, write_rgb
from shapely.geometry import box, shape

from segmenter.errors import CysegError
from segmenter.suggest import Candidate, select, uncertainty
from segmenter.wsi.pyramid import write_pyramid

GLASS = (236, 232, 238)
FAST = ["--device", "cpu", "--views", "2"]


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("cyseg: error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------- the math
def test_uncertainty_is_zero_when_views_agree_and_grows_with_their_spread():
    agree = np.full((4, 1, 8, 8), 0.3, np.float32)
    assert uncertainty(agree, "tta") == 0
    spread = agree.copy()
    spread[:2] = 0.1
    spread[2:] = 0.5  # std 0.2 everywhere
    assert uncertainty(spread, "tta") == pytest.approx(0.2)
    assert uncertainty(np.full((2, 1, 4, 4), 0.5, np.float32), "entropy") == pytest.approx(1.0)
    assert uncertainty(np.full((2, 1, 4, 4), 0.999, np.float32), "entropy") < 0.02
    with pytest.raises(CysegError, match="--measure 'x' is not known"):
        uncertainty(agree, "x")


def candidate(name: str, u: float, features: list[float]) -> Candidate:
    return Candidate(name, (0, 0, 1, 1), u, np.asarray(features, np.float32))


def test_selection_spreads_over_unlike_candidates():
    """Two near twins are the most uncertain; the second pick is the unlike one, not the twin."""
    pool = [candidate("a", 1.0, [0, 0]), candidate("a-twin", 0.99, [0.01, 0]),
            candidate("other", 0.6, [5, 5]), candidate("calm", 0.01, [-5, 5])]
    chosen = select(pool, 2)
    assert {s.candidate.source for s in chosen} in ({"a", "other"}, {"a-twin", "other"})
    assert [s.rank for s in chosen] == [1, 2] and chosen[0].distance == 1.0 and chosen[1].distance > 1
    assert chosen[0].score > chosen[1].score > 0  # each pick covers less that is new


def test_selection_prefers_the_typical_to_the_odd_among_the_uncertain():
    """The most uncertain candidate is an outlier; the uncertain one like most of the pool (which
    teaches the model about the rest) comes first. Calm candidates are never suggested."""
    crowd = [candidate(f"crowd{i}", 0.1, [i * 0.01, 0]) for i in range(10)]
    pool = [candidate("odd", 1.0, [20, 20]), candidate("typical", 0.9, [0.05, 0.01]), *crowd]
    chosen = select(pool, 1)
    assert chosen[0].candidate.source == "typical"
    assert [s.candidate.source for s in select(pool, 2)] == ["typical", "odd"]


def test_the_density_weight_puts_the_crowded_region_before_an_uncertain_fringe():
    """Two uncertain look-alikes far from a crowd of calmer images: by uncertainty they come first; a density
    weight counts the crowd by how typical its images are, first at 1, for both picks at the largest weight."""
    crowd = [candidate(f"crowd{i}", 0.2, [i * 0.1, 0]) for i in range(6)]
    pool = [*crowd, candidate("odd", 1.0, [4, 4]), candidate("odd-twin", 1.0, [4.1, 4])]

    def picks(density: float) -> list[str]:
        return [s.candidate.source for s in select(pool, 2, uncertainty_weight=1.0, density_weight=density)]

    assert picks(0)[0].startswith("odd") and picks(0)[1].startswith("crowd")
    assert picks(1)[0].startswith("crowd") and picks(1)[1].startswith("odd")
    assert all(name.startswith("crowd") for name in picks(4))
    with pytest.raises(CysegError, match="--density-weight 5 is outside"):
        select(pool, 1, density_weight=5)


def test_annotated_images_cover_their_look_alikes():
    """The most uncertain candidate would come first, but an annotated image looks just like it: the
    pick goes where nothing annotated covers the pool, and its distance is to the annotated image."""
    pool = [candidate("like-done", 1.0, [0, 0]), candidate("like-done-2", 0.9, [0.1, 0]),
            candidate("elsewhere", 0.8, [5, 5]), candidate("elsewhere-2", 0.7, [5.1, 5])]
    assert select(pool, 1)[0].candidate.source.startswith("like-done")
    chosen = select(pool, 1, [candidate("done", 0.0, [0.05, 0])])
    assert chosen[0].candidate.source == "elsewhere"
    assert 1.5 < chosen[0].distance < 2.5  # about two standardised spreads from the annotated image


def test_the_deepest_feature_map_describes_what_the_network_sees(tiny_model):
    """One vector per forward pass, as long as the encoder's deepest level is wide, the same wherever
    the content lies (channel means), and the hooks gone afterwards."""
    from segmenter.suggest import deepest_features
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), np.uint8)
    with deepest_features(seg) as features:
        seg.predict(image)
        seg.predict(np.ascontiguousarray(image[:, ::-1]))
    net = seg.inference_model()
    assert len(features) == 2 and features[0].shape == (net.n * 2 ** (net.depth - 1),)
    assert np.allclose(features[0], features[1], atol=0.05 * np.abs(features[0]).max())
    seg.predict(image)
    assert len(features) == 2


def test_selection_refuses_more_than_the_candidates():
    with pytest.raises(CysegError, match="--count 3 is more than the 2 candidate"):
        select([candidate("a", 1, [0]), candidate("b", 1, [1])], 3)
    with pytest.raises(CysegError, match="--count 0 must be at least 1"):
        select([candidate("a", 1, [0])], 0)


# ---------------------------------------------------------------------------------------- folders
@pytest.fixture
def pool(ihc_dataset, tmp_path) -> Path:
    """A dataset folder: the training crops with their masks, plus four crops without a mask."""
    root = tmp_path / "pool"
    shutil.copytree(ihc_dataset.train, root)
    for i, name in enumerate(sorted(p.name for p in (root / "images").iterdir())[:4]):
        (root / "images" / name).rename(root / "images" / f"new{i}.png")
        (root / "masks" / name).unlink()
    return root


def test_suggests_only_images_without_a_mask(tiny_model, pool, tmp_path):
    result = invoke(["-q", "suggest", tiny_model, pool, "--count", "3", "--out", tmp_path / "s", *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = rows(tmp_path / "s.csv")
    assert [r["rank"] for r in table] == ["1", "2", "3"]
    assert all(r["source"].startswith("new") for r in table) and len({r["source"] for r in table}) == 3
    scores = [float(r["score"]) for r in table]
    # the first pick's distance is to the nearest annotated image (the pool has some), not the 1 of none
    assert all(s >= 0 for s in scores) and 0 < float(table[0]["distance"]) < 10 and float(table[0]["distance"]) != 1
    collection = json.loads((tmp_path / "s.geojson").read_text())
    assert [f["properties"]["rank"] for f in collection["features"]] == [1, 2, 3]
    assert all(shape(f["geometry"]).area > 0 for f in collection["features"])
    result = invoke(["-q", "suggest", tiny_model, pool, "--count", "4", "--measure", "entropy", "--out",
                     tmp_path / "e", *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(r["source"] for r in rows(tmp_path / "e.csv")) == [f"new{i}.png" for i in range(4)]
    result = invoke(["-q", "suggest", tiny_model, pool, "--count", "2", "--uncertainty-weight", "0",
                     "--density-weight", "2", "--out", tmp_path / "c", *FAST])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "c.geojson").read_text())["properties"]
    assert settings["uncertainty_weight"] == 0 and settings["density_weight"] == 2


def test_a_folder_of_images_not_annotated_yet_needs_no_dataset_json(ihc_image, tmp_path):
    """A new user's first pool: images/ and nothing else, ranked by the shipped cell + nucleus model; the
    class check applies only to what a folder annotates or declares."""
    (tmp_path / "pool" / "images").mkdir(parents=True)
    for i, (y, x) in enumerate([(0, 0), (0, 256), (256, 0)]):
        write_rgb(tmp_path / "pool" / "images" / f"crop{i}.png", ihc_image[y:y + 128, x:x + 128])
    result = invoke(["-q", "suggest", "default", tmp_path / "pool", "--count", "2", "--out", tmp_path / "s", *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(rows(tmp_path / "s.csv")) == 2


def test_annotated_images_described_are_a_seeded_sample_of_max_candidates(tiny_model, pool):
    from cyseg.suggest_cmd import SuggestOptions, crop_candidates
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    todo, done = crop_candidates(seg, pool, SuggestOptions(count=1))
    assert sorted(c.source for c in todo) == [f"new{i}.png" for i in range(4)] and len(done) == 2
    assert all(c.box[2] > 0 and c.box[3] > 0 for c in done)
    _, few = crop_candidates(seg, pool, SuggestOptions(count=1, limit=1))
    assert len(few) == 1 and {c.source for c in few} <= {c.source for c in done}
    assert [c.source for c in crop_candidates(seg, pool, SuggestOptions(count=1, limit=1))[1]] == \
        [c.source for c in few]


def test_bad_folders_are_one_line_and_write_nothing(tiny_model, pool, ihc_dataset, tmp_path):
    out = tmp_path / "s"
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "5", "--out", out, *FAST]),
                   "--count 5 is more than the 4 candidate")
    one_line_error(invoke(["-q", "suggest", tiny_model, ihc_dataset.train, "--count", "1", "--out", out, *FAST]),
                   "has a mask already")
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "1", "--out", out, "--device", "cpu",
                           "--views", "9"]), "--views 9 must be between 2 and 8")
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "1", "--out", out, *FAST,
                           "--uncertainty-weight", "-1"]), "--uncertainty-weight -1.0 is outside [0, 4]")
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "1", "--out", out, *FAST,
                           "--density-weight", "5"]), "--density-weight 5.0 is outside [0, 4]")
    (pool / "dataset.json").write_text(json.dumps({"classes": ["nucleus"]}))
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "1", "--out", out, *FAST]),
                   "declares classes", "one unnamed foreground")
    one_line_error(invoke(["-q", "suggest", tiny_model, tmp_path / "missing", "--count", "1", *FAST]),
                   "does not exist")
    one_line_error(invoke(["-q", "suggest", tiny_model, pool, "--count", "1", "--upload", *FAST]),
                   "need --cytomine-image")

    assert not list(tmp_path.glob("s*")) and not list(tmp_path.glob(".s*"))


# ---------------------------------------------------------------------------------------- slides
@pytest.fixture(scope="module")
def slide(tmp_path_factory, ihc_image) -> Path:
    """1024x768 glass with three patches of the IHC image."""
    image = np.empty((768, 1024, 3), np.uint8)
    image[:] = GLASS
    image[0:256, 0:256] = ihc_image[:256, :256]
    image[512:768, 256:512] = ihc_image[256:, :256]
    image[256:512, 768:1024] = ihc_image[256:, 256:]
    path = tmp_path_factory.mktemp("suggest") / "patches.tif"
    write_pyramid(path, image, compression="zlib", description="BUILT for tests from skimage's IHC image")
    return path


def test_slide_tiles_follow_the_tissue_and_avoid_annotated_regions(tiny_model, slide, tmp_path):
    args = ["-q", "suggest", tiny_model, slide, "--size", "128", *FAST]
    result = invoke([*args, "--count", "12", "--out", tmp_path / "all"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    tissue = box(0, 0, 256, 256).union(box(256, 512, 512, 768)).union(box(768, 256, 1024, 512))
    boxes = [shape(f["geometry"]) for f in json.loads((tmp_path / "all.geojson").read_text())["features"]]
    assert len(boxes) == 12 and all(b.intersection(tissue).area > 0 for b in boxes)
    annotated = tmp_path / "annotated.geojson"
    annotated.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": box(10, 10, 500, 500).__geo_interface__, "properties": {}}]}))
    result = invoke([*args, "--count", "8", "--annotated", annotated, "--out", tmp_path / "rest"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rest = [shape(f["geometry"]) for f in json.loads((tmp_path / "rest.geojson").read_text())["features"]]
    assert len(rest) == 8 and not any(b.intersects(box(10, 10, 500, 500)) for b in rest)
    # the annotated tissue tiles are described too: the first pick's distance is to the nearest of them
    assert float(rows(tmp_path / "rest.csv")[0]["distance"]) != 1.0
    assert float(rows(tmp_path / "all.csv")[0]["distance"]) == 1.0
    one_line_error(invoke([*args, "--count", "9", "--annotated", annotated, "--out", tmp_path / "x"]),
                   "--count 9 is more than the 8 candidate")


def test_a_slide_without_tissue_is_refused(tiny_model, tmp_path):
    blank = tmp_path / "blank.tif"
    write_pyramid(blank, np.full((512, 512, 3), GLASS, np.uint8), compression="zlib", description="BUILT blank")
    one_line_error(invoke(["-q", "suggest", tiny_model, blank, "--count", "1", "--size", "128", "--out",
                           tmp_path / "s", *FAST]), "no tissue tile")
    assert not list(tmp_path.glob("s*"))


# ---------------------------------------------------------------------------------------- Cytomine
@pytest.fixture
def env(cytomine_seed, monkeypatch):
    pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")
    import segmenter.cytomine.retry as retry_module

    monkeypatch.setattr(retry_module, "BACKOFF", 0.01)
    server = cytomine_seed.server
    monkeypatch.setenv("CYTOMINE_HOST", server.url)
    monkeypatch.setenv("CYTOMINE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", server.private_key)
    yield cytomine_seed
    from cytomine_server.fixtures import disconnect

    disconnect()


def test_cytomine_suggestions_become_rois_once(tiny_model, env, tmp_path):
    from segmenter.cytomine.geometry import flip_y

    server, roi = env.server, env.terms["roi"]
    expert = box(0, 0, 300, 300)  # an expert annotation already there (slide frame), its tiles left out
    server.add_annotation(env.image, flip_y(expert, 700).wkt, term=env.terms["nucleus"])
    args = ["-q", "suggest", tiny_model, "--cytomine-image", env.image, "--count", "3", "--size", "128",
            "--out", tmp_path / "s", *FAST]
    one_line_error(invoke([*args, "--upload"]), "--upload needs --term")
    result = invoke([*args, "--upload", "--term", roi])
    assert result.exit_code == 0, result.output + repr(result.exception)
    stored = server.annotations(image=env.image, term=roi)
    suggested = [shape(f["geometry"]) for f in json.loads((tmp_path / "s.geojson").read_text())["features"]]
    assert len(stored) == 3 == len(suggested) and not any(b.intersects(expert) for b in suggested)
    from shapely import wkt

    assert sorted(flip_y(wkt.loads(a["location"]), 700).bounds for a in stored) == sorted(b.bounds for b in suggested)
    again = invoke([*args, "--upload", "--term", roi])
    assert again.exit_code == 0 and "0 new" in again.stdout
    assert len(server.annotations(image=env.image, term=roi)) == 3
    # the annotators' ROIs come back as crops of the same places with `cydata download`
    from click.testing import CliRunner

    from cydata.cli import cli as cydata

    descriptor = tmp_path / "d.json"
    descriptor.write_text(json.dumps({"project": env.project, "roi": roi, "foreground": [env.terms["nucleus"]]}))
    down = CliRunner().invoke(cydata, ["-q", "download", "--json", str(descriptor), "--out", str(tmp_path / "back"),
                                       "--size", "128"], prog_name="cydata")
    assert down.exit_code == 0, down.output
    items = json.loads((tmp_path / "back" / "dataset.json").read_text())["items"]
    assert sorted(tuple(v["crop"]) for v in items.values()) == sorted(
        (int(x), int(y), 128, 128) for x, y, _, _ in (b.bounds for b in suggested))
