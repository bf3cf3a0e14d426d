"""`cydata download` and `cydata roi` against the local Cytomine test server, through the real CLI
(click's CliRunner, and one real subprocess) and the real cytomine-python-client.

The server serves a generated 1000 x 700 pyramidal TIFF (and a 600 x 400 PNG) read with OpenSlide;
annotations are seeded in Cytomine's frame (origin bottom-left, y up). Pixel checks compare the
downloaded crops with OpenSlide's read of the same region; mask checks compare the rasterised masks
with the pixels a seeded square must cover, which pins the single y-flip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from shapely import wkt as shapely_wkt

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine_server.fixtures import Seed, slide_region

from cydata.cli import cli
from segmenter.cytomine.credentials import server_fingerprint
from segmenter.io.dataset import check_dataset, open_dataset

ROOT = Path(__file__).resolve().parents[1]
H = 700  # height of the sample slide (1000 x 700): Cytomine y = H - slide y


def cyto_box(x0: int, y0: int, x1: int, y1: int, height: int = H, start: int = 0) -> str:
    """WKT of the slide-pixel box (x0, y0)-(x1, y1) (top-left origin) in Cytomine's frame, the
    ring starting at vertex `start` (so no code can rely on a vertex order)."""
    ring = [(x0, height - y1), (x1, height - y1), (x1, height - y0), (x0, height - y0)]
    ring = ring[start:] + ring[:start]
    ring.append(ring[0])
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"


def box_mask(shape: tuple[int, int], crop: list[int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """0/255 mask of slide-pixel boxes (x0, y0, x1, y1) seen through a zoom-0 crop (x, y, w, h)."""
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        r0, r1 = max(0, y0 - crop[1]), min(shape[0], y1 - crop[1])
        c0, c1 = max(0, x0 - crop[0]), min(shape[1], x1 - crop[0])
        if r1 > r0 and c1 > c0:
            mask[r0:r1, c0:c1] = 255
    return mask


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_grey(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def env(cytomine_seed: Seed, monkeypatch):
    """Credentials in the environment (as a user would set them); fast back-off for the tests."""
    server = cytomine_seed.server
    monkeypatch.setenv("CYTOMINE_HOST", server.url)
    monkeypatch.setenv("CYTOMINE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", server.private_key)
    monkeypatch.setattr("segmenter.cytomine.retry.BACKOFF", 0.01)
    return cytomine_seed


def run(*args, secret: str | None = None):
    """Run the real `cydata` group; stdout and stderr apart. Asserts the private key never shows."""
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="cydata")
    if secret:
        assert secret not in result.stdout and secret not in result.stderr
    return result


def one_error_line(stderr: str) -> bool:
    """The failure is reported as one `cydata: error:` line, without a traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("cydata: error:")]
    return len(errors) == 1 and "Traceback" not in stderr and stderr.rstrip().endswith(errors[0])


def assert_no_secret(folder: Path, secret: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def window_requests(server, image: int) -> list:
    return [r for r in server.requests if r.path.startswith(f"/api/imageinstance/{image}/window-")]


NUCLEUS = (300, 200, 340, 230)    # slide pixels (x0, y0, x1, y1), top-left origin
NEIGHBOUR = (350, 240, 380, 270)  # a second nucleus inside the first one's crop
CLUSTER = (250, 160, 290, 190)    # another term, inside the crop: never in a nucleus mask
OUTSIDE = (1100, 100, 1150, 150)  # right of the 1000-px-wide image


# ------------------------------------------------------------------------------ filters --------
def test_filters_pixels_equal_openslide_and_mask_is_the_seeded_square(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    nucleus = server.add_annotation(env.image, cyto_box(*NUCLEUS, start=2), terms["nucleus"])
    neighbour = server.add_annotation(env.image, cyto_box(*NEIGHBOUR), terms["nucleus"])
    server.add_annotation(env.image, cyto_box(*CLUSTER), terms["cluster"])
    outside = server.add_annotation(env.image, cyto_box(*OUTSIDE), terms["nucleus"])
    out = tmp_path / "ds"
    result = run("-v", "download", "--project", env.project, "--term", terms["nucleus"], "--image", env.image,
                 "--out", out, "--size", 128, "--workers", 2, secret=server.private_key)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert not Path(str(out) + ".partial").exists()
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "images", "masks"]
    manifest = json.loads((out / "dataset.json").read_text())
    item = manifest["items"][f"i{env.image}_a{nucleus}"]
    # centroid (320, 215) -> box centred on it
    assert item["crop"] == [256, 151, 128, 128]
    assert item["slide"] == env.image and item["image_id"] == env.image
    assert item["project"] == env.project and item["annotations"] == [nucleus]
    assert item["terms"] == [terms["nucleus"]] and item["kind"] == "cell" and item["zoom"] == 0
    assert item["server"] == server_fingerprint(server.url)  # never the address itself
    assert sorted(item["mask_annotations"]) == sorted([nucleus, neighbour])
    stem = f"i{env.image}_a{nucleus}"
    image = read_rgb(out / "images" / f"{stem}.png")
    assert np.array_equal(image, slide_region(env.image_path, 256, 151, 128, 128))
    mask = read_grey(out / "masks" / f"{stem}.png")
    assert mask.dtype == np.uint8 and mask.ndim == 2
    expected = box_mask((128, 128), item["crop"], NUCLEUS, NEIGHBOUR)
    assert np.array_equal(mask, expected)
    assert mask[49:79, 44:84].min() == 255 and mask.sum() == 255 * (40 * 30 + 30 * 30)  # exact pixels
    # the annotation outside the image is reported and listed, not downloaded
    assert [s["annotation"] for s in manifest["skipped"]] == [outside]
    assert "outside" in manifest["skipped"][0]["reason"] and "outside" in result.stderr
    assert len(manifest["items"]) == 2
    assert_no_secret(out, server.private_key)
    # masks came from annotation polygons fetched with a bbox in Cytomine's frame, not from window masks
    listing = [r for r in server.requests if r.path == "/api/annotation.json" and "bbox" in r.query]
    assert listing and all(r.query.get("showWKT") == "True" for r in listing)
    assert "256,421,384,549" in {r.query["bbox"] for r in listing}  # y: 700-279 .. 700-151
    assert all(r.query.get("mask") is None for r in window_requests(server, env.image))


def test_filters_zoom_one_reads_the_next_level(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    nucleus = server.add_annotation(env.image, cyto_box(400, 300, 440, 340), terms["nucleus"])
    out = tmp_path / "z1"
    result = run("download", "--project", env.project, "--out", out, "--size", 64, "--zoom", 1)
    assert result.exit_code == 0, result.output
    item = json.loads((out / "dataset.json").read_text())["items"][f"i{env.image}_a{nucleus}"]
    assert item["crop"] == [356, 256, 128, 128] and item["zoom"] == 1 and item["size"] == [64, 64]
    image = read_rgb(out / "images" / f"i{env.image}_a{nucleus}.png")
    assert np.array_equal(image, slide_region(env.image_path, 356, 256, 64, 64, level=1))
    mask = read_grey(out / "masks" / f"i{env.image}_a{nucleus}.png")
    expected = np.zeros((64, 64), np.uint8)
    expected[22:42, 22:42] = 255  # (400-356)/2 .. (440-356)/2
    assert np.array_equal(mask, expected)
    if server.profile.legacy:  # its windows honour zoom
        assert window_requests(server, env.image)[-1].query.get("zoom") == "1"
    else:  # the others ignore it: the downscaled region is a crop scaled to its longest side
        crop = [r for r in server.requests if r.path == f"/api/imageinstance/{env.image}/crop.png"][-1]
        assert crop.query["maxSize"] == "64" and "zoom" not in crop.query
        assert shapely_wkt.loads(crop.query["location"]).bounds == (356, H - 384, 484, H - 256)


def test_several_foreground_terms_and_unknown_kind(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    other = server.add_term("debris", env.ontology)
    debris = server.add_annotation(env.image, cyto_box(*NUCLEUS), other)
    server.add_annotation(env.image, cyto_box(*CLUSTER), terms["cluster"])
    server.add_annotation(env.image, cyto_box(*NEIGHBOUR), terms["nucleus"])
    out = tmp_path / "multi"
    result = run("download", "--project", env.project, "--term", other, "--out", out, "--size", 128,
                 "--foreground-term", terms["nucleus"], "--foreground-term", terms["cluster"], "--insecure")
    assert result.exit_code == 0, result.output
    item = json.loads((out / "dataset.json").read_text())["items"][f"i{env.image}_a{debris}"]
    assert item["kind"] is None and item["term_names"] == ["debris"]
    assert item["foreground_terms"] == [terms["nucleus"], terms["cluster"]]
    assert np.array_equal(read_grey(out / "masks" / f"i{env.image}_a{debris}.png"),
                          box_mask((128, 128), item["crop"], CLUSTER, NEIGHBOUR))
    listing = [r for r in server.requests if r.path == "/api/annotation.json" and "bbox" in r.query]
    assert listing[-1].query["terms"] == f"{terms['nucleus']},{terms['cluster']}"
    assert "not verifying the HTTPS certificate" in result.stderr and "InsecureRequestWarning" not in result.stderr


# ------------------------------------------------------------------------------ CSV ------------
def test_csv_by_column_names_in_another_order_with_extra_columns(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    nucleus = server.add_annotation(env.image, cyto_box(*NUCLEUS), terms["nucleus"])
    cluster = server.add_annotation(env.png, cyto_box(100, 100, 160, 140, height=400), terms["cluster"])
    csv = tmp_path / "report.csv"
    # the thesis' order is Id;Area;Perimeter;X;Y;Image Id;...: here shuffled, renamed ID, with extras
    csv.write_text(
        "Image Filename;Y;Comment;ID;Term;X;Image Id;Area (microns²)\n"
        f"ihc-pyramid.tiff;485;first;{nucleus};nucleus;320;{env.image};75.0\n"
        f"ihc.png;280;second;{cluster};cluster;130;{env.png};150.0\n"
        f"gone.tiff;10;unknown image;123456;nucleus;10;999999;1\n"
        f"ihc-pyramid.tiff;-300;out of the image;{nucleus + 1000};nucleus;320;{env.image};1\n",
        encoding="utf-8")
    out = tmp_path / "csv-ds"
    result = run("download", "--csv", csv, "--out", out, "--size", 128, secret=server.private_key)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "dataset.json").read_text())
    items = manifest["items"]
    assert sorted(items) == sorted([f"i{env.image}_a{nucleus}", f"i{env.png}_a{cluster}"])
    a = items[f"i{env.image}_a{nucleus}"]
    assert a["crop"] == [256, 151, 128, 128] and a["kind"] == "cell" and a["foreground_terms"] == [terms["nucleus"]]
    assert np.array_equal(read_grey(out / "masks" / f"i{env.image}_a{nucleus}.png"),
                          box_mask((128, 128), a["crop"], NUCLEUS))
    b = items[f"i{env.png}_a{cluster}"]
    # the PNG is 400 px high: centroid (130, 280) in Cytomine's frame is (130, 120) in the slide's
    assert b["crop"] == [66, 56, 128, 128] and b["kind"] == "pattern" and b["slide"] == env.png
    assert np.array_equal(read_rgb(out / "images" / f"i{env.png}_a{cluster}.png"),
                          slide_region(env.png_path, 66, 56, 128, 128))
    assert np.array_equal(read_grey(out / "masks" / f"i{env.png}_a{cluster}.png"),
                          box_mask((128, 128), b["crop"], (100, 100, 160, 140)))
    reasons = {s["what"]: s["reason"] for s in manifest["skipped"]}
    assert "image 999999 not found" in reasons["annotation 123456"]
    assert "outside" in reasons[f"annotation {nucleus + 1000}"]
    assert "skipped 2 item(s)" in result.stderr
    assert_no_secret(out, server.private_key)


def test_csv_missing_y_column_names_it(env: Seed, tmp_path):
    csv = tmp_path / "report.csv"
    csv.write_text(f"Id;X;Image Id;Term\n1;10;{env.image};nucleus\n")
    result = run("download", "--csv", csv, "--out", tmp_path / "x")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cydata: error:")
    assert "no 'Y' column" in lines[0] and "'Id', 'X', 'Image Id', 'Term'" in lines[0]
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ descriptor -----
def test_json_descriptor_roi_bounds_padding_and_tiling(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    small = server.add_annotation(env.image, cyto_box(100, 100, 200, 180, start=1), terms["roi"])
    # a pentagon: its real bounds are 400..700 x 300..600, whatever vertex comes first (thesis bug B10)
    pentagon = (f"POLYGON ((700 {H - 450}, 550 {H - 600}, 400 {H - 450}, 450 {H - 300}, 650 {H - 300}, "
                f"700 {H - 450}))")
    large = server.add_annotation(env.image, pentagon, terms["roi"])
    other_user, _, _ = server.add_user("someone")
    server.add_annotation(env.image, cyto_box(800, 100, 900, 200), terms["roi"], user=other_user)
    server.add_annotation(env.image, cyto_box(*NUCLEUS), terms["nucleus"])
    cell = server.add_annotation(env.image, cyto_box(120, 110, 140, 130), terms["nucleus"])
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"images": [env.image], "user": server.user_id, "project": env.project,
                                "roi": terms["roi"], "foreground": terms["nucleus"]}))
    out = tmp_path / "rois"
    result = run("download", "--json", desc, "--out", out, "--size", 128, secret=server.private_key)
    assert result.exit_code == 0, result.output
    items = json.loads((out / "dataset.json").read_text())["items"]
    # the small ROI (100x80) is padded to 128 around its centre (150, 140)
    pad = items[f"i{env.image}_roi{small}_r0c0"]
    assert pad["crop"] == [86, 76, 128, 128] and pad["roi"] == [100, 100, 200, 180] and pad["kind"] == "roi"
    assert pad["annotations"] == [small] and pad["foreground_terms"] == [terms["nucleus"]]
    assert pad["mask_annotations"] == [cell]
    assert np.array_equal(read_grey(out / "masks" / f"i{env.image}_roi{small}_r0c0.png"),
                          box_mask((128, 128), pad["crop"], (120, 110, 140, 130)))
    # the large ROI (300x300) is tiled 3x3 with 128-px crops that stay inside it and cover it
    tiles = {k: v for k, v in items.items() if k.startswith(f"i{env.image}_roi{large}_")}
    assert len(tiles) == 9
    starts = sorted({v["crop"][0] for v in tiles.values()})
    assert starts == [400, 486, 572] and sorted({v["crop"][1] for v in tiles.values()}) == [300, 386, 472]
    covered = np.zeros((H, 1000), bool)
    for v in tiles.values():
        x, y, w, h = v["crop"]
        assert (w, h) == (128, 128) and x >= 400 and x + w <= 700 and y >= 300 and y + h <= 600
        covered[y:y + h, x:x + w] = True
    assert covered[300:600, 400:700].all()
    t = items[f"i{env.image}_roi{large}_r0c0"]
    assert np.array_equal(read_rgb(out / "images" / f"i{env.image}_roi{large}_r0c0.png"),
                          slide_region(env.image_path, *t["crop"]))
    assert len(items) == 10  # the other user's ROI is not taken


# ------------------------------------------------------------------------------ faults ---------
def test_resume_after_failures_fetches_only_the_missing_items(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    tiff = [server.add_annotation(env.image, cyto_box(100 + 200 * i, 300, 140 + 200 * i, 340), terms["nucleus"])
            for i in range(2)]
    png = [server.add_annotation(env.png, cyto_box(100 + 200 * i, 100, 140 + 200 * i, 140, height=400),
                                 terms["nucleus"]) for i in range(2)]
    out = tmp_path / "resume"
    partial = Path(str(out) + ".partial")
    fault = server.inject(rf"/api/imageinstance/{env.png}/window-", 500, times=100)
    args = ["download", "--project", env.project, "--out", out, "--size", 96, "--retries", 1]
    first = run(*args, secret=server.private_key)
    assert first.exit_code == 2, first.output
    lines = first.stderr.strip().splitlines()
    assert lines[-1].startswith("cydata: error: 2 of 4 crop(s) failed after the retries")
    assert "rerun the same command" in lines[-1]
    assert not out.exists() and partial.is_dir() and not (partial / "dataset.json").exists()
    assert sorted(p.stem for p in (partial / "items").glob("*.json")) == sorted(f"i{env.image}_a{a}" for a in tiff)
    assert len(fault.hits) == 4  # two items x (first try + one retry)
    server.clear_faults()
    server.clear_requests()
    second = run(*args, secret=server.private_key)
    assert second.exit_code == 0, second.output
    assert not partial.exists() and out.is_dir()
    assert window_requests(server, env.image) == []  # the finished items are not fetched again
    assert len(window_requests(server, env.png)) == 2
    manifest = json.loads((out / "dataset.json").read_text())
    assert sorted(manifest["items"]) == sorted([f"i{env.image}_a{a}" for a in tiff] + [f"i{env.png}_a{a}" for a in png])
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "images", "masks"]
    assert manifest["source"]["cytomine"]["server"] == server_fingerprint(server.url)
    dataset = open_dataset(out)  # the dataset reader takes it as it is, masks binary and aligned
    check_dataset(dataset)
    assert {item.slide for item in dataset.items} == {str(env.image), str(env.png)}
    assert_no_secret(out, server.private_key)


def test_other_parameters_do_not_continue_a_partial_download(env: Seed, tmp_path):
    server = env.server
    server.add_annotation(env.png, cyto_box(100, 100, 140, 140, height=400), env.terms["nucleus"])
    server.inject(r"/window-", 500, times=10)
    out = tmp_path / "p"
    assert run("download", "--project", env.project, "--out", out, "--retries", 0).exit_code == 2
    server.clear_faults()
    result = run("download", "--project", env.project, "--out", out, "--size", 256)
    assert result.exit_code == 2 and "other parameters (size differ)" in result.stderr


def test_server_errors_drops_and_timeouts_are_retried(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    a = server.add_annotation(env.image, cyto_box(*NUCLEUS), terms["nucleus"])
    b = server.add_annotation(env.png, cyto_box(100, 100, 140, 140, height=400), terms["nucleus"])
    server.inject(rf"/api/imageinstance/{env.image}/window-", 503, times=2)
    server.inject(rf"/api/imageinstance/{env.png}/window-", 500, times=1)
    server.inject(rf"/api/imageinstance/{env.png}/window-", "drop", times=1)
    server.inject(rf"/api/imageinstance/{env.png}/window-", "truncate", times=1)
    server.inject(r"/api/annotation\.json\?.*bbox", "timeout", times=1, delay=3.0)
    server.inject(r"/api/annotation\.json\?.*bbox", "truncate", times=1)
    out = tmp_path / "retried"
    result = run("download", "--project", env.project, "--out", out, "--size", 128, "--timeout", 1, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert server.faults.pending() == []
    statuses = [r.status for r in window_requests(server, env.image)]
    assert statuses == [503, 503, 200]
    assert [r.fault for r in window_requests(server, env.png)] == ["500", "drop", "truncate", None]
    assert [r.fault for r in server.requests if "bbox" in r.query] == ["timeout", "truncate", None, None]
    items = json.loads((out / "dataset.json").read_text())["items"]
    assert sorted(items) == sorted([f"i{env.image}_a{a}", f"i{env.png}_a{b}"])
    assert np.array_equal(read_grey(out / "masks" / f"i{env.image}_a{a}.png"),
                          box_mask((128, 128), items[f"i{env.image}_a{a}"]["crop"], NUCLEUS))


def test_wrong_keys_unknown_project_unreachable_server(env: Seed, tmp_path, monkeypatch):
    server = env.server
    unknown = run("download", "--project", 999999, "--out", tmp_path / "a", secret=server.private_key)
    assert unknown.exit_code == 2
    assert one_error_line(unknown.stderr)
    assert "--project 999999: no such project" in unknown.stderr
    bad_term = run("download", "--project", env.project, "--term", 999999, "--out", tmp_path / "b")
    assert bad_term.exit_code == 2 and "--term 999999: no such term" in bad_term.stderr
    bad_image = run("download", "--project", env.project, "--image", 999999, "--out", tmp_path / "c")
    assert bad_image.exit_code == 2 and "--image 999999: no such image in project" in bad_image.stderr
    wrong = "0123456789abcdef-wrong-private-key"
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", wrong)
    refused = run("download", "--project", env.project, "--out", tmp_path / "d", secret=wrong)
    assert refused.exit_code == 2 and one_error_line(refused.stderr)
    assert "refused the keys" in refused.stderr and server.public_key not in refused.stderr
    monkeypatch.setenv("CYTOMINE_HOST", "http://127.0.0.1:9")
    unreachable = run("download", "--project", env.project, "--out", tmp_path / "e", "--retries", 0)
    assert unreachable.exit_code == 2 and "cannot reach Cytomine at http://127.0.0.1:9" in unreachable.stderr
    monkeypatch.delenv("CYTOMINE_HOST")
    missing = run("download", "--project", env.project, "--out", tmp_path / "f")
    assert missing.exit_code == 2 and "CYTOMINE_HOST" in missing.stderr
    monkeypatch.setenv("CYTOMINE_HOST", server.url)
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", server.private_key)
    nothing = run("download", "--project", env.project, "--term", env.terms["cluster"], "--out", tmp_path / "h")
    assert nothing.exit_code == 2 and "nothing to download" in nothing.stderr and one_error_line(nothing.stderr)
    usage = run("download", "--project", env.project, "--csv", "x.csv", "--out", tmp_path / "g")
    assert usage.exit_code == 2 and "exactly one of --csv, --json or --project" in usage.stderr
    for name in "abcdefgh":
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.partial").exists()


# ------------------------------------------------------------------------------ roi ------------
def test_roi_at_position_is_stored_in_cytomine_frame_and_downloads_back(env: Seed, tmp_path):
    server, terms = env.server, env.terms
    result = run("roi", "--project", env.project, "--image", env.image, "--size", 200, "--at", "100,50",
                 secret=server.private_key)
    assert result.exit_code == 0, result.output
    (ident,) = [int(line) for line in result.stdout.split()]
    stored = server.annotation(ident)
    assert stored["terms"] == [terms["roi"]]  # the project's term named 'roi' by default
    assert shapely_wkt.loads(stored["location"]).bounds == (100.0, H - 250.0, 300.0, H - 50.0)
    # the ROI comes back as the crop of the same place
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({"project": env.project, "roi": terms["roi"], "foreground": [terms["nucleus"]]}))
    out = tmp_path / "back"
    down = run("download", "--json", desc, "--out", out, "--size", 200, "--image", 1)
    assert down.exit_code == 2 and "--image only apply with --project" in down.stderr
    down = run("download", "--json", desc, "--out", out, "--size", 200)
    assert down.exit_code == 0, down.output
    items = json.loads((out / "dataset.json").read_text())["items"]
    assert [v["crop"] for v in items.values()] == [[100, 50, 200, 200]]


def test_roi_random_places_stay_inside_and_apart(env: Seed):
    server, terms = env.server, env.terms
    result = run("roi", "--project", env.project, "--image", env.png, "--size", 150, "--count", 3, "--seed", 7,
                 "--term", terms["roi"])
    assert result.exit_code == 0, result.output
    ids = [int(line) for line in result.stdout.split()]
    assert len(ids) == 3
    boxes = [shapely_wkt.loads(server.annotation(i)["location"]) for i in ids]
    for i, geom in enumerate(boxes):
        minx, miny, maxx, maxy = geom.bounds
        assert minx >= 0 and maxx <= 600 and miny >= 0 and maxy <= 400 and (maxx - minx, maxy - miny) == (150, 150)
        assert all(geom.intersection(other).area == 0 for other in boxes[i + 1:])
    outside = run("roi", "--project", env.project, "--image", env.png, "--size", 150, "--at", "500,10")
    assert outside.exit_code == 2 and "x must be in 0..450" in outside.stderr
    wrong_term = run("roi", "--project", env.project, "--image", env.png, "--term", 999999)
    assert wrong_term.exit_code == 2 and "is not a term of project" in wrong_term.stderr
    assert len(server.annotations(image=env.png)) == 3


# ------------------------------------------------------------------------------ subprocess -----
def test_real_subprocess_download(env: Seed, tmp_path):
    server = env.server
    a = server.add_annotation(env.image, cyto_box(*NUCLEUS), env.terms["nucleus"])
    config = tmp_path / "cytomine.json"
    config.write_text(json.dumps({"host": server.url, "public_key": server.public_key,
                                  "private_key": server.private_key}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYTOMINE_")}
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "cydata.cli", "-v", "download", "--project", str(env.project),
                           "--out", str(out), "--size", "64", "--cytomine-config", str(config)],
                          capture_output=True, text=True, env=environ, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert server.private_key not in proc.stdout + proc.stderr
    assert (out / "images" / f"i{env.image}_a{a}.png").is_file()
    assert_no_secret(out, server.private_key)
