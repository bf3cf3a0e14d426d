"""No key and no host string in any output: for every core generation, `cyseg segment
--cytomine-image --upload`, `cydata download`, `cydata roi` and (legacy core) `cyseg job` run with
distinctive keys and a host string holding a user name and password. The keys and the host string
appear in no file written (GeoJSON, journals, window cache, masks, dataset, job log and work
folder), the user info in no output stream or log record (DEBUG included), and the normalised
address `scheme://name:port` in no file either (files name the server by a digest)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine_server.fixtures import Seed, disconnect

import segmenter.cytomine.retry as retry_module
from cydata.cli import cli as cydata_cli
from cyseg.cli import cli as cyseg_cli

PUBLIC = "zq-distinctive-public-key-77aa"
PRIVATE = "zq-distinctive-private-key-0f4b8c1e"
USER_INFO = "alice-q7:pw-s3cret-9d2"
SMALL = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--device", "cpu"]


@pytest.fixture
def secretive(cytomine_seed: Seed, tmp_path, monkeypatch, caplog) -> dict:
    """A user with distinctive keys, a config file naming the server with user info, no
    CYTOMINE_* variables, fast retries; DEBUG records captured."""
    server = cytomine_seed.server
    server.store.add_user("secretive", admin=True, public_key=PUBLIC, private_key=PRIVATE)
    host = f"http://{USER_INFO}@{server.url.split('://', 1)[1]}"
    config = tmp_path / "config" / "cytomine.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"host": host, "public_key": PUBLIC, "private_key": PRIVATE}))
    for name in ("CYTOMINE_HOST", "CYTOMINE_PUBLIC_KEY", "CYTOMINE_PRIVATE_KEY", "CYSEG_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(retry_module, "BACKOFF", 0.01)
    caplog.set_level(logging.DEBUG)
    yield {"host": host, "config": config, "work": tmp_path / "work"}
    disconnect()


def check_clean(result, caplog, folders: list[Path], server) -> None:
    """Keys and user info nowhere; the address itself in no file."""
    streams = result.stdout + result.stderr + caplog.text
    for secret in (PUBLIC, PRIVATE, USER_INFO, "pw-s3cret-9d2", "alice-q7"):
        assert secret not in streams, secret
    written = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert written
    address = server.url.split("://", 1)[1]  # 127.0.0.1:<port>
    for path in written:
        data = path.read_bytes()
        for secret in (PUBLIC, PRIVATE, "s3cret", "alice-q7", address):
            assert secret.encode() not in data, (path, secret)


def test_cyseg_segment_and_upload(tiny_model, cytomine_seed, secretive, caplog):
    s, work = cytomine_seed, secretive["work"]
    args = ["-v", "segment", str(tiny_model), "--cytomine-image", str(s.image), "--out", str(work / "s.geojson"),
            *SMALL, "--window", "0,0,300,300", "--upload", "--term", str(s.terms["nucleus"]),
            "--cytomine-config", str(secretive["config"]), "--mask-out", str(work / "mask.png")]
    result = CliRunner().invoke(cyseg_cli, args, prog_name="cyseg", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert s.server.annotations(image=s.image)
    assert f"connected to Cytomine at {s.server.url} ({s.server.profile.name})" in result.stderr
    written = {p.name for p in work.rglob("*") if p.is_file()}
    assert "s.geojson.upload.json" in written and any(name.startswith("window-") for name in written)
    check_clean(result, caplog, [work], s.server)
    bad = CliRunner().invoke(cyseg_cli, ["segment", str(tiny_model), "--cytomine-image", "987654",
                                         "--cytomine-config", str(secretive["config"])], prog_name="cyseg")
    assert bad.exit_code == 2 and f"does not exist on {s.server.url}" in bad.stderr
    check_clean(bad, caplog, [work], s.server)


def test_cydata_download_and_roi(cytomine_seed, secretive, caplog):
    s, work = cytomine_seed, secretive["work"]
    config = str(secretive["config"])
    roi = CliRunner().invoke(cydata_cli, ["-v", "roi", "--project", str(s.project), "--image", str(s.image),
                                          "--size", "96", "--at", "300,200", "--cytomine-config", config],
                             prog_name="cydata")
    assert roi.exit_code == 0, roi.output
    down = CliRunner().invoke(cydata_cli, ["-v", "download", "--project", str(s.project), "--out", str(work / "ds"),
                                           "--size", "64", "--zoom", "1", "--cytomine-config", config],
                              prog_name="cydata")
    assert down.exit_code == 0, down.output
    assert (work / "ds" / "dataset.json").is_file()
    check_clean(roi, caplog, [work], s.server)
    check_clean(down, caplog, [work], s.server)


@pytest.mark.parametrize("cytomine_profile", ["legacy"])
def test_cyseg_job(tiny_model, cytomine_seed, secretive, caplog):
    s = cytomine_seed
    software = s.server.register_software(json.loads((Path(__file__).parents[1] / "descriptor.json").read_text()),
                                          "1.0.0")
    job, user, words = s.server.launch_job(s.project, software, {
        "cytomine_id_predicted_term": s.terms["nucleus"], "cytomine_id_images": s.png, "tile_size": 256,
        "tile_overlap": 32, "window_size": 512, "model_path": tiny_model})
    keys = s.server.user(user)
    argv = [word.replace(s.server.url, secretive["host"]) for word in words[3:]]  # the host with user info
    result = CliRunner().invoke(cyseg_cli, ["-v", "job", *argv, "--work_dir", str(secretive["work"])],
                                prog_name="cyseg", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert s.server.job(job)["status"] == 3
    (log,) = s.server.attached_files(job)
    address = s.server.url.split("://", 1)[1]
    for secret in (keys["public_key"], keys["private_key"], USER_INFO, "s3cret"):
        assert secret.encode() not in log["data"]
        assert secret not in result.stdout + result.stderr + caplog.text
    written = [path for path in secretive["work"].rglob("*") if path.is_file()]
    assert any(path.suffix == ".log" for path in written) and any(path.suffix == ".geojson" for path in written)
    for data in [log["data"], *(path.read_bytes() for path in written)]:
        for secret in (keys["public_key"], keys["private_key"], "s3cret", "alice-q7", address):
            assert secret.encode() not in data, secret


def test_job_log_file_leaves_out_keys_host_string_and_address(tmp_path):
    from cyseg.job import job_log

    path = tmp_path / "job.log"
    host = "https://alice-q7:pw-s3cret-9d2@cytomine.example.org:8443"
    with job_log(path, [PUBLIC, PRIVATE, host, "cytomine.example.org:8443"]):
        logging.getLogger("cyseg.job").info("connected to Cytomine at %s (%s); keys %s %s", host,
                                            "https://cytomine.example.org:8443", PUBLIC, PRIVATE)
    text = path.read_text()
    assert "INFO cyseg.job: connected to Cytomine at *** (https://***); keys *** ***" in text
    assert not [s for s in (PUBLIC, PRIVATE, "alice-q7", "s3cret", "cytomine.example.org") if s in text]
