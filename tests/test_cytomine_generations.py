"""Talking to each core generation: the connection finds the generation (or takes it from
--cytomine-api / the config file's "api"), signs as that core verifies, remembers it across
pickling, reads downscaled regions and overviews the way that core serves them, and a wrong
generation or a missing feature is one line naming the generation."""
from __future__ import annotations

import json
import pickle

import numpy as np
import openslide
import pytest
from click.testing import CliRunner

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine_server.fixtures import Seed, disconnect

import segmenter.cytomine.reader as reader_module
import segmenter.cytomine.retry as retry_module
from cydata.cli import cli as cydata_cli
from cyseg.cli import cli as cyseg_cli
from segmenter.cytomine.connection import Connection
from segmenter.cytomine.credentials import Credentials
from segmenter.cytomine.generations import NAMES
from segmenter.cytomine.reader import CytomineSlideReader
from segmenter.errors import CysegError

OTHER = {"legacy": "spring", "spring": "current", "current": "spring"}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(retry_module, "BACKOFF", 0.01)
    yield
    disconnect()


def probes(server) -> list[tuple[str, int | None, str | None]]:
    return [(r.path, r.status, r.auth) for r in server.requests]


def test_detection_signs_as_the_core_verifies_and_is_remembered(cytomine_seed: Seed):
    server = cytomine_seed.server
    name = server.profile.name
    connection = Connection(Credentials(server.url, server.public_key, server.private_key))
    assert connection.api == name and connection.user_id == server.user_id
    signed = "no-path" if name == "current" else "with-path"
    expected = [("/server/ping", 200, None), ("/api/user/current.json", 200, signed)]
    if name == "current":  # the path-signed try is refused first
        expected.insert(1, ("/api/user/current.json", 401, None))
    assert probes(server) == expected
    server.clear_requests()
    assert connection.get_json(f"project/{cytomine_seed.project}.json", what="p")["id"] == cytomine_seed.project
    assert probes(server) == [(f"/api/project/{cytomine_seed.project}.json", 200, signed)]
    # a pickled copy (a Dask worker) reconnects as the same generation, without probing again
    state = pickle.dumps(connection)
    connection.close()
    server.clear_requests()
    clone = pickle.loads(state)
    clone.creds = Credentials(server.url, server.public_key, server.private_key, api=clone.api)
    assert clone.client is not None and clone.api == name
    assert [r.status for r in server.requests] == [200, 200]  # ping, then the user once
    clone.close()


def test_given_generation_skips_detection_and_a_wrong_one_is_one_line(cytomine_seed: Seed, tmp_path):
    server = cytomine_seed.server
    name = server.profile.name
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"host": server.url, "public_key": server.public_key,
                                  "private_key": server.private_key, "api": name}))
    from segmenter.cytomine.credentials import credentials

    server.clear_requests()
    Connection(credentials(config=config)).close()
    assert [r.status for r in server.requests] == [200, 200]  # no refused probe
    wrong = OTHER[name]
    with pytest.raises(CysegError) as info:
        Connection(Credentials(server.url, server.public_key, server.private_key), api=wrong)
    message = str(info.value)
    assert f"Cytomine at {server.url}" in message and "\n" not in message
    if name == "legacy" or wrong == "legacy":
        assert "answers /server/ping like" in message and NAMES[wrong] in message
    else:
        assert f"refused the keys signed for {NAMES[wrong]}" in message and "--cytomine-api" in message


def test_cli_option_takes_the_generation(cytomine_seed: Seed, tiny_model, tmp_path, monkeypatch):
    server = cytomine_seed.server
    name = server.profile.name
    for var, value in (("CYTOMINE_HOST", server.url), ("CYTOMINE_PUBLIC_KEY", server.public_key),
                       ("CYTOMINE_PRIVATE_KEY", server.private_key)):
        monkeypatch.setenv(var, value)
    out = tmp_path / "ds"
    wrong = CliRunner().invoke(cydata_cli, ["download", "--project", str(cytomine_seed.project), "--out", str(out),
                                            "--cytomine-api", OTHER[name]], prog_name="cydata")
    lines = wrong.stderr.strip().splitlines()
    assert wrong.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"cydata: error: Cytomine at {server.url}")
    assert not out.exists() and not (tmp_path / "ds.partial").exists()
    bad = CliRunner().invoke(cyseg_cli, ["segment", str(tiny_model), "--cytomine-image", "1", "--cytomine-api", "g9"],
                             prog_name="cyseg")
    assert bad.exit_code == 2 and "--cytomine-api" in bad.stderr
    server.clear_requests()
    good = CliRunner().invoke(cydata_cli, ["roi", "--project", str(cytomine_seed.project), "--image",
                                           str(cytomine_seed.png), "--size", "50", "--at", "10,10",
                                           "--cytomine-api", name], prog_name="cydata")
    assert good.exit_code == 0, good.output
    assert not [r for r in server.requests if r.status == 401]  # signed right from the first request


def test_downscaled_overview_of_a_long_slide(cytomine_seed: Seed, monkeypatch):
    """An overview larger than the thumbnail endpoint gives is assembled from downscaled regions:
    windows at a zoom on the legacy core, crops elsewhere (their windows ignore zoom)."""
    server = cytomine_seed.server
    monkeypatch.setattr(reader_module, "THUMB_MAX", 100)
    connection = Connection(Credentials(server.url, server.public_key, server.private_key))
    reader = CytomineSlideReader(cytomine_seed.image, connection)
    server.clear_requests()
    thumb, downsample = reader.thumbnail(250)
    assert thumb.shape == (175, 250, 3) and downsample == 4.0
    slide = openslide.open_slide(str(cytomine_seed.image_path))
    try:
        level2 = np.asarray(slide.read_region((0, 0), 2, (250, 175)))[:, :, :3]
    finally:
        slide.close()
    assert np.abs(thumb.astype(int) - level2.astype(int)).mean() < 3
    sent = [r for r in server.requests if r.path.startswith("/api/")]
    assert sent and not [r for r in sent if r.path.endswith("/thumb.png")]
    if server.profile.legacy:
        assert all("/window-" in r.path and r.query.get("zoom") == "2" for r in sent)
    else:
        assert all(r.path.endswith("/crop.png") and "zoom" not in r.query for r in sent)
    connection.close()


def test_segment_on_a_wrong_generation_writes_nothing(cytomine_seed: Seed, tiny_model, tmp_path, monkeypatch):
    server = cytomine_seed.server
    for var, value in (("CYTOMINE_HOST", server.url), ("CYTOMINE_PUBLIC_KEY", server.public_key),
                       ("CYTOMINE_PRIVATE_KEY", server.private_key)):
        monkeypatch.setenv(var, value)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cyseg_cli, ["segment", str(tiny_model), "--cytomine-image", str(cytomine_seed.png),
                                            "--out", str(out / "s.geojson"), "--mask-out", str(out / "m.png"),
                                            "--upload", "--cytomine-api", OTHER[server.profile.name]],
                                prog_name="cyseg")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"cyseg: error: Cytomine at {server.url}") and "--cytomine-api" in lines[0]
    assert list(out.iterdir()) == [] and server.annotations() == []
    assert not [r for r in server.requests if "imageinstance" in r.path]
