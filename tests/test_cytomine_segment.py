"""`cyseg segment MODEL --cytomine-image ID [--upload]` against the local Cytomine test server:
the whole-slide engine over HTTP gives exactly the polygons of a local run on the same file
(windows are PNG: lossless), uploads land once in Cytomine's frame, an interrupted upload
resumes without duplicates, and server faults are retried or reported as one line."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import openslide
import pytest
from click.testing import CliRunner
from shapely import wkt as shapely_wkt
from shapely.geometry import MultiPolygon, Polygon, box, shape

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine_server import api as server_api
from cytomine_server.fixtures import Seed, disconnect

import segmenter.cytomine.retry as retry_module
import segmenter.cytomine.upload as upload_module
from cyseg.cli import cli
from segmenter.cytomine.connection import Connection
from segmenter.cytomine.credentials import Credentials, server_fingerprint
from segmenter.cytomine.geometry import flip_y
from segmenter.cytomine.reader import open_cytomine_image
from segmenter.errors import CysegError

# small tiles and windows: the 1000x700 sample slide gets several windows of several tiles
SMALL = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--simplify", "0",
         "--device", "cpu"]


@pytest.fixture(autouse=True)
def fresh_client_and_fast_retries(monkeypatch):
    monkeypatch.setattr(retry_module, "BACKOFF", 0.01)
    yield
    disconnect()  # forget the process-wide client singleton


@pytest.fixture
def env(cytomine_seed: Seed, monkeypatch) -> Seed:
    """Credentials of the server's admin user in the environment (as a user would set them)."""
    server = cytomine_seed.server
    monkeypatch.setenv("CYTOMINE_HOST", server.url)
    monkeypatch.setenv("CYTOMINE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", server.private_key)
    return cytomine_seed


def run(args: list, **kwargs):
    """The real CLI in-process; -q (no progress bars, warnings and errors only) unless -v/-q given."""
    args = [str(a) for a in args]
    if args[0] not in ("-q", "-v"):
        args = ["-q", *args]
    return CliRunner().invoke(cli, args, prog_name="cyseg", catch_exceptions=False, **kwargs)


def features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def polygons(path: Path) -> list[Polygon]:
    return [shape(f["geometry"]) for f in features(path)]


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("cyseg: error:")]
    assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def uploaded(server, image: int) -> list[Polygon]:
    """The server's annotations of the image, back in the slide frame (top-left origin)."""
    height = server.sql("SELECT height FROM images WHERE id = ?", (image,))[0]["height"]
    return [flip_y(shapely_wkt.loads(a["location"]), height) for a in server.annotations(image=image)]


def same_polygons(a: list[Polygon], b: list[Polygon], tolerance: float = 0.011) -> bool:
    """Equal multisets of polygons up to the upload grid (0.01 px)."""
    if len(a) != len(b):
        return False
    rest = list(b)
    for p in a:
        match = next((q for q in rest if abs(q.area - p.area) < 1 and p.equals_exact(q, tolerance)), None)
        if match is None:
            match = next((q for q in rest if p.symmetric_difference(q).area < 1e-3 * max(p.area, 1)), None)
        if match is None:
            return False
        rest.remove(match)
    return True


# ------------------------------------------------------------------------------------------------
def test_cytomine_image_gives_the_local_polygons_and_uploads_them(tiny_model, env, tmp_path):
    server = env.server
    local, remote = tmp_path / "local.geojson", tmp_path / "remote.geojson"
    assert run(["segment", tiny_model, env.image_path, "--out", local, *SMALL]).exit_code == 0
    server.clear_requests()
    assert run(["segment", tiny_model, "--cytomine-image", env.image, "--out", remote, *SMALL]).exit_code == 0
    # the same engine over HTTP: exactly the same polygons and properties (PNG windows are lossless)
    assert features(remote) and features(remote) == features(local)
    meta = json.loads(remote.read_text())["properties"]
    assert meta["slide"]["cytomine"] == {"server": server_fingerprint(server.url), "image": env.image,
                                         "project": env.project, "filename": env.image_path.name}
    windows = [r for r in server.requests if "/window-" in r.path]
    assert windows and all(r.path.endswith(".png") and r.status == 200 for r in windows)
    assert not [r for r in server.requests if r.path.endswith("/download")]  # never the whole original file
    # a window of the image, uploaded: once each, with the term, in Cytomine's frame (y up)
    part, local_part = tmp_path / "part.geojson", tmp_path / "local-part.geojson"
    box_args = ["--window", "200,100,400,300"]
    assert run(["segment", tiny_model, env.image_path, "--out", local_part, *SMALL, *box_args]).exit_code == 0
    server.clear_requests()
    result = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", part, *SMALL, *box_args,
                  "--upload", "--term", env.terms["nucleus"], "--upload-batch", "25"])
    assert result.exit_code == 0, result.output
    assert "upload complete" in result.stdout
    assert features(part) == features(local_part)
    stored = server.annotations(image=env.image)
    assert len(stored) == len(features(part)) > 25
    assert all(a["terms"] == [env.terms["nucleus"]] and a["user"] == server.user_id for a in stored)
    assert same_polygons(uploaded(server, env.image), polygons(part))  # flip_y back gives the GeoJSON
    posts = [r for r in server.requests if r.method == "POST" and r.path == "/api/annotation.json"]
    assert len(posts) == -(-len(stored) // 25)  # batches of --upload-batch
    # a rerun finds everything done in the journal: no new annotation, no POST
    server.clear_requests()
    again = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", part, *SMALL, *box_args,
                 "--upload", "--term", env.terms["nucleus"], "--upload-batch", "25"])
    assert again.exit_code == 0 and "0 new" in again.stdout
    assert len(server.annotations(image=env.image)) == len(stored)
    assert not [r for r in server.requests if r.method == "POST"]


def test_reader_levels_chunks_thumbnail_and_pickling(env):
    server = env.server
    reader = open_cytomine_image(env.image)
    assert (reader.width, reader.height, reader.mpp) == (1000, 700, 0.25)
    assert reader.level_downsamples[:3] == [1.0, 2.0, 4.0] and reader.level_dimensions[1] == (500, 350)
    slide = openslide.open_slide(str(env.image_path))
    try:
        truth = np.asarray(slide.read_region((0, 0), 0, (1000, 700)))[:, :, :3]
        truth1 = np.asarray(slide.read_region((0, 0), 1, (500, 350)))[:, :, :3]
    finally:
        slide.close()
    server.clear_requests()
    reader.max_window = 300
    assert np.array_equal(reader.read(0, 0, 1000, 700), truth)
    sizes = [tuple(int(v) for v in r.path.split("window-")[1].split(".")[0].split("-")[2:]) for r in server.requests]
    assert len(sizes) == 12 and max(max(s) for s in sizes) <= 300  # 4 x 3 chunks
    server.clear_requests()
    assert np.array_equal(reader.read(0, 0, 500, 350, 1), truth1)  # zoom 1 = pyramid level 1
    downscaled = [r for r in server.requests if r.path.startswith(f"/api/imageinstance/{env.image}/")]
    if server.profile.legacy:  # its windows honour zoom
        assert downscaled and all("/window-" in r.path and r.query["zoom"] == "1" for r in downscaled)
    else:  # the others ignore zoom: crops scaled to their longest side, never a window at a zoom
        assert downscaled and all(r.path.endswith("/crop.png") and "maxSize" in r.query for r in downscaled)
    white = reader.read(900, 600, 200, 200)  # beyond the slide: white, as local readers do
    assert np.array_equal(white[:100, :100], truth[600:, 900:]) and (white[100:] == 255).all()
    thumb, downsample = reader.thumbnail(250)
    assert thumb.shape == (175, 250, 3) and downsample == 4.0
    thumbs = [r for r in server.requests if "/thumb.png" in r.path]
    assert thumbs[-1].query["maxSize"] == "250" and thumbs[-1].status == 200
    # what an API-key client may read: the abstract image's (Grails), the reference slice's (others)
    assert thumbs[-1].path.startswith("/api/abstractimage/" if server.profile.legacy else "/api/sliceinstance/")
    # pickled state: host, image id, credentials source -- never the keys; reconnects by itself
    state = pickle.dumps(reader)
    assert server.private_key.encode() not in state and server.public_key.encode() not in state
    assert server.private_key not in repr(reader)
    disconnect()
    clone = pickle.loads(state)
    assert np.array_equal(clone.read(100, 100, 64, 64), truth[100:164, 100:164])


def test_windows_shrunk_by_the_server_are_split_never_accepted(env, monkeypatch):
    """A server whose windows are at most 256 px (it resizes larger ones, thesis bug B12)."""
    real = server_api.imaging.scaled_size
    limit = {"px": 256}

    def capped(w, h, zoom=None, max_size=None):
        out_w, out_h = real(w, h, zoom, max_size)
        scale = min(1.0, limit["px"] / max(out_w, out_h))
        return max(1, int(out_w * scale + 0.5)), max(1, int(out_h * scale + 0.5))

    monkeypatch.setattr(server_api.imaging, "scaled_size", capped)
    reader = open_cytomine_image(env.image)
    slide = openslide.open_slide(str(env.image_path))
    truth = np.asarray(slide.read_region((0, 0), 0, (1000, 700)))[:, :, :3]
    slide.close()
    assert np.array_equal(reader.read(0, 0, 1000, 700), truth)
    assert reader.max_window == 256
    thumb, downsample = reader.thumbnail(500)  # the thumb endpoint is capped too: built from windows
    assert thumb.shape == (350, 500, 3) and downsample == 2.0
    limit["px"] = 64
    reader.max_window = 128
    with pytest.raises(CysegError, match=r"window x=0, y=0, 128x128: the server answered a 64x64 image"):
        reader.read(0, 0, 128, 128)


def test_window_faults_are_retried(tiny_model, env, tmp_path):
    server = env.server
    reference, out = tmp_path / "ref.geojson", tmp_path / "faults.geojson"
    box_args = ["--window", "0,0,600,400", "--no-skip-background"]
    assert run(["segment", tiny_model, "--cytomine-image", env.image, "--out", reference, *SMALL,
                *box_args]).exit_code == 0
    faults = [server.inject(r"/window-", 500), server.inject(r"/window-", 503), server.inject(r"/window-", "drop"),
              server.inject(r"/window-", "truncate"), server.inject(r"/window-", "timeout", delay=3)]
    result = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", out, *SMALL, *box_args,
                  "--cytomine-timeout", "1", "--cache", tmp_path / "c2"])
    assert result.exit_code == 0, result.output
    assert all(f.remaining == 0 for f in faults)
    assert features(out) == features(reference)


def test_window_that_keeps_failing_is_named(tiny_model, env, tmp_path):
    env.server.inject(r"/window-", 500, times=1000)
    result = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", tmp_path / "x.geojson", *SMALL,
                  "--no-skip-background"])
    one_line_error(result, f"Cytomine image {env.image}: window x=0, y=0", "after 4 attempts", "HTTP 500")
    assert not (tmp_path / "x.geojson").exists()


def test_overloaded_server_is_retried_by_the_connection_only(tiny_model, env, tmp_path):
    """A window answered 503 on every try: the session's adapter retries it (4 times, with
    back-off) and the reader gives up then, instead of retrying the adapter's retries again."""
    env.server.inject(r"/window-", 503, times=1000)
    before = len(env.server.requests)
    result = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", tmp_path / "x.geojson", *SMALL,
                  "--no-skip-background"])
    one_line_error(result, f"Cytomine image {env.image}: window x=0, y=0", "HTTP 503 after the connection's retries")
    assert sum("/window-" in r.path for r in env.server.requests[before:]) == 5
    assert not (tmp_path / "x.geojson").exists()


def test_wrong_keys_unknown_image_and_unknown_term(tiny_model, env, tmp_path, monkeypatch):
    out = tmp_path / "x.geojson"
    one_line_error(run(["segment", tiny_model, "--cytomine-image", 999999, "--out", out]),
                   "Cytomine image 999999 does not exist")
    one_line_error(run(["segment", tiny_model, "--cytomine-image", env.image, "--out", out, "--upload",
                        "--term", 999999]), "term 999999 does not exist")
    other_ontology = env.server.add_term("elsewhere", env.server.add_ontology("other"))
    one_line_error(run(["segment", tiny_model, "--cytomine-image", env.image, "--out", out, "--upload",
                        "--term", other_ontology]), "not in the ontology of project")
    one_line_error(run(["segment", tiny_model, "--cytomine-image", env.image, "--term", 5]), "add --upload")
    monkeypatch.setenv("CYTOMINE_PRIVATE_KEY", "not-the-key")
    one_line_error(run(["segment", tiny_model, "--cytomine-image", env.image, "--out", out]), "refused the keys")
    monkeypatch.delenv("CYTOMINE_PRIVATE_KEY")
    one_line_error(run(["segment", tiny_model, "--cytomine-image", env.image, "--out", out]),
                   "CYTOMINE_PRIVATE_KEY")
    assert not out.exists() and env.server.annotations() == []


def test_interrupted_upload_resumes_without_duplicates(tiny_model, env, tmp_path, monkeypatch):
    server = env.server
    out = tmp_path / "up.geojson"
    args = ["segment", tiny_model, "--cytomine-image", env.image, "--out", out, *SMALL, "--window", "0,0,400,300",
            "--upload", "--term", env.terms["nucleus"], "--upload-batch", "7"]
    real_post = upload_module.Uploader.post
    calls = {"n": 0}

    def flaky_post(self, wkts):
        calls["n"] += 1
        if calls["n"] == 2:  # saved by the server, but the answer is cut: outcome unknown
            server.inject(r"^/api/annotation\.json", "truncate", method="POST")
        if calls["n"] == 4:  # from now on the connection drops: the upload must stop
            server.inject(r"^/api/annotation\.json", "drop", times=10_000, method="POST")
        return real_post(self, wkts)

    monkeypatch.setattr(upload_module.Uploader, "post", flaky_post)
    first = run(args)
    total = len(features(out))
    assert total > 3 * 7, "the test needs several batches"
    line = one_line_error(first, "upload INCOMPLETE", "rerun the same command to resume")
    partial = server.annotations(image=env.image)
    assert len(partial) == 3 * 7  # batches 1-3 (the truncated one saved once), nothing of batch 4
    assert f"{len(partial)} of {total} annotations on the server" in line
    journal = json.loads((tmp_path / "up.geojson.upload.json").read_text())
    assert sorted(b["state"] for b in journal["batches"].values()) == ["done"] * 3 + ["sent"]
    # resume: the unacknowledged batch is checked on the server first, then sent; no duplicates
    server.clear_faults()
    monkeypatch.setattr(upload_module.Uploader, "post", real_post)
    second = run(args)
    assert second.exit_code == 0, second.output
    assert f"{total} of {total} annotations on the server" in second.stdout
    stored = server.annotations(image=env.image)
    assert len(stored) == total
    assert len({a["location"] for a in stored}) == total
    assert same_polygons(uploaded(server, env.image), polygons(out))
    lists = [r for r in server.requests if r.method == "GET" and r.path == "/api/annotation.json"]
    assert lists and all(r.query.get("image") == str(env.image) and "bbox" in r.query for r in lists)


def test_unknown_outcome_is_checked_on_the_server_before_resending(env):
    """A POST whose answer is lost after the server saved it is not sent twice (same run)."""
    server = env.server
    client = Connection(Credentials(server.url, server.public_key, server.private_key))
    squares = [box(10 + 30 * i, 10, 30 + 30 * i, 30) for i in range(10)]
    server.inject(r"^/api/annotation\.json", "truncate", method="POST")
    server.inject(r"^/api/annotation\.json", 503, method="POST")
    uploader = upload_module.Uploader(client, env.image, env.project, 700, term=env.terms["nucleus"], batch_size=4)
    result = uploader.upload(squares, 1000)
    assert result.complete and result.on_server == 10
    assert len(server.annotations(image=env.image)) == 10


def test_bad_geometries_are_cleaned_clipped_or_skipped_before_upload(env):
    server = env.server
    client = Connection(Credentials(server.url, server.public_key, server.private_key))
    bowtie = Polygon([(100, 100), (200, 200), (200, 100), (100, 200)])  # self-intersecting
    shapes = [
        box(10, 10, 50, 40),  # fine
        box(980, 680, 1040, 720),  # crosses the bottom-right corner: clipped
        box(2000, 2000, 2100, 2100),  # outside the image: skipped
        bowtie,  # invalid: made valid, two triangles
        MultiPolygon([box(300, 300, 320, 320), box(400, 300, 420, 320)]),  # split in two
        Polygon(),  # empty: skipped
        box(500, 500, 500.3, 560),  # thinner than a pixel: skipped
    ]
    prepared = upload_module.prepare_polygons(shapes, 1000, 700)
    assert (prepared.given, prepared.clipped, prepared.dropped, prepared.split) == (7, 1, 3, 2)
    assert len(prepared.polygons) == 6 and all(p.is_valid and p.within(box(0, 0, 1000, 700)) for p in prepared.polygons)
    result = upload_module.Uploader(client, env.image, env.project, 700, batch_size=100).upload(shapes, 1000)
    assert result.complete and result.on_server == 6 and result.refused == 0
    assert "1 clipped at the image border, 3 dropped" in result.summary()
    back = uploaded(server, env.image)
    assert len(back) == 6 and any(p.bounds == (980.0, 680.0, 1000.0, 700.0) for p in back)
    # no server clipping
    assert [a for a in server.annotations(image=env.image) if a["location"] != a["received"]] == []


def test_empty_result_uploads_nothing_and_succeeds(tiny_model, env, tmp_path):
    out = tmp_path / "none.geojson"
    result = run(["segment", tiny_model, "--cytomine-image", env.png, "--out", out, *SMALL, "--threshold", "1",
                  "--upload"])
    assert result.exit_code == 0, result.output
    assert features(out) == []
    assert "upload complete: 0 of 0 annotations" in result.stdout
    assert env.server.annotations() == []


def test_dask_worker_reopens_the_image_it_receives(tiny_model, env, tmp_path):
    single, dask = tmp_path / "single.geojson", tmp_path / "dask.geojson"
    box_args = ["--window", "0,0,1000,400"]
    assert run(["segment", tiny_model, "--cytomine-image", env.image, "--out", single, *SMALL,
                *box_args]).exit_code == 0
    result = run(["segment", tiny_model, "--cytomine-image", env.image, "--out", dask, *SMALL, *box_args,
                  "--workers", "1", "--cache", tmp_path / "c2"])
    assert result.exit_code == 0, result.output
    assert features(dask) == features(single)
    sent = pickle.dumps(open_cytomine_image(env.image))  # what a worker receives: no keys, no connection
    assert env.server.private_key.encode() not in sent and env.server.public_key.encode() not in sent
    reopened = pickle.loads(sent)
    assert reopened.image_id == env.image and reopened.read(0, 0, 64, 32).shape == (32, 64, 3)


def test_insecure_turns_verification_off_with_one_warning(tiny_model, env, tmp_path):
    from cytomine import Cytomine

    result = run(["segment", tiny_model, "--cytomine-image", env.png, "--out", tmp_path / "i.geojson", *SMALL,
                  "--window", "0,0,256,256", "--insecure"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("verification is OFF") == 1
    assert Cytomine.get_instance()._session.verify is False
    assert run(["segment", tiny_model, "--cytomine-image", env.png, "--out", tmp_path / "s.geojson", *SMALL,
                "--window", "0,0,256,256"]).exit_code == 0
    assert Cytomine.get_instance()._session.verify is True  # verified by default
