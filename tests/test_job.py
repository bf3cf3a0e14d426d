"""`cyseg job` against the legacy (Grails) profile of the local Cytomine test server, the only core
with a job API: the software registered from descriptor.json as the router does, the job launched
as the web UI and the core do (server-set parameters filled, the command built from the value keys
and flags), the container's entry point given that command. The job is found (UI run, algo user)
or created (CLI run, human user); status RUNNING -> progress -> SUCCESS with the annotations in the
job's layer and the run's log attached to the job, or FAILED with the one-line message and exit
status 2. On the Spring and current profiles `cyseg job` stops at once with one line naming the
server's generation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapely import wkt as shapely_wkt
from shapely.geometry import box

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine_server.fixtures import Seed, disconnect
from test_docker_descriptor import DESCRIPTOR, dockerfile_entrypoint, router_command

import segmenter.cytomine.retry as retry_module
from cyseg.cli import cli
from segmenter.cytomine.generations import NAMES
from segmenter.cytomine.geometry import flip_y

REPO = Path(__file__).resolve().parents[1]
RUNNING, SUCCESS, FAILED = 2, 3, 4
LEGACY = pytest.mark.parametrize("cytomine_profile", ["legacy"])
CONNECTION = ("cytomine_host", "cytomine_public_key", "cytomine_private_key", "cytomine_id_project",
              "cytomine_id_software")


@pytest.fixture(autouse=True)
def no_env_credentials(monkeypatch, tmp_path):
    """The job gets everything from its flags: no CYTOMINE_* variables, HOME in tmp."""
    for name in ("CYTOMINE_HOST", "CYTOMINE_PUBLIC_KEY", "CYTOMINE_PRIVATE_KEY", "CYSEG_MODEL", "CYSEG_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(retry_module, "BACKOFF", 0.01)
    yield
    disconnect()


@pytest.fixture
def software(cytomine_seed: Seed) -> int:
    """The software the router registers from descriptor.json (version 1.0.0)."""
    return cytomine_seed.server.register_software(DESCRIPTOR, "1.0.0")


def launched_argv(seed: Seed, software: int, **values) -> tuple[int, int, list[str]]:
    """A job launched from the UI: (job, job user, what the container receives). The router runs
    `singularity run <image>.simg <command>`; the image's runscript is its entry point + the words."""
    job, user, words = seed.server.launch_job(seed.project, software, {
        "cytomine_id_predicted_term": seed.terms["nucleus"], "tile_size": 256, "tile_overlap": 32,
        "window_size": 512, **values})
    assert words[:2] == ["singularity", "run"] and words[2].endswith("-1.0.0.simg")
    return job, user, dockerfile_entrypoint() + words[3:]


def job_argv(seed: Seed, software: int, public: str, private: str, **values) -> list[str]:
    """What the container receives: the image's entry point + the router's command words."""
    base = {"cytomine_host": seed.server.url, "cytomine_public_key": public, "cytomine_private_key": private,
            "cytomine_id_project": seed.project, "cytomine_id_software": software,
            "cytomine_id_predicted_term": seed.terms["nucleus"], "tile_size": 256, "tile_overlap": 32,
            "window_size": 512}
    base.update(values)
    return dockerfile_entrypoint() + router_command(DESCRIPTOR, base)


def run_job(argv: list[str]):
    assert argv[0] == "cyseg"
    return CliRunner().invoke(cli, ["-q", *argv[1:]], prog_name="cyseg", catch_exceptions=False)


def attached_log(server, job: int) -> str:
    """The log the run attached to its job (one file, the Grails class name of a job)."""
    files = server.attached_files(job)
    assert [(f["domain_class"], f["filename"]) for f in files] == [("be.cytomine.processing.Job",
                                                                     f"cyseg-job-{job}.log")]
    return files[0]["data"].decode()


def check_history(history: list[dict], final: int) -> None:
    """RUNNING with progress 0 first, progress never going back, updates at least 5 % apart
    unless the comment changes phase, and the final status last."""
    assert history[0]["status"] == RUNNING and history[0]["progress"] == 0
    assert history[0]["statusComment"] == "Initialization..."
    assert history[-1]["status"] == final and all(h["status"] == RUNNING for h in history[:-1])
    progress = [h["progress"] for h in history[:-1]]
    assert progress == sorted(progress)
    assert all(len(h["statusComment"]) <= 255 for h in history)
    for h in history:  # the whole job JSON was sent, as the Cytomine clients do
        assert {"id", "project", "software", "status", "progress", "statusComment"} <= set(h["body"])


@LEGACY
def test_cli_run_as_human_creates_the_job_and_uploads_in_its_layer(tiny_model, cytomine_seed, software, tmp_path):
    seed, server = cytomine_seed, cytomine_seed.server
    argv = job_argv(seed, software, server.public_key, server.private_key, model_path=tiny_model, min_area=40)
    assert argv[:4] == ["cyseg", "job", "cyseg", "job"] and "CYTOMINE_ID_IMAGES" in argv  # all images
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYTOMINE_")}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", "from cyseg.cli import main; main()", *argv[1:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    jobs = server.jobs(project=seed.project)
    assert len(jobs) == 1 and jobs[0]["software"] == software and jobs[0]["creator"] == server.user_id
    job = jobs[0]
    history = server.job_history(job["id"])
    check_history(history, SUCCESS)
    assert all(h["user"] == job["user_job"] for h in history)  # reported with the job user's keys
    running = [h for h in history if h["status"] == RUNNING]
    assert len(running) >= 5 and len({h["progress"] for h in running}) >= 4  # progress as windows finish
    assert len(running) <= 100 // 5 + 2 * 2 + 1  # throttled: 5 % steps, plus one forced update per image
    assert any("window" in h["statusComment"] for h in running)
    assert any("Uploading" in h["statusComment"] for h in running)
    assert history[-1]["progress"] == 100
    annotations = server.annotations(project=seed.project)
    assert annotations and all(a["kind"] == "algo" and a["user"] == job["user_job"] for a in annotations)
    assert all(a["terms"] == [seed.terms["nucleus"]] for a in annotations)
    assert {a["image"] for a in annotations} == {seed.image, seed.png}
    final = history[-1]["statusComment"]
    assert final == f"Finished: {len(annotations)} annotations uploaded on 2 images."
    assert done.stdout.strip().splitlines()[-1] == final
    # the outputs are in the default work folder, polygons in the slide frame (y down)
    work = tmp_path / "home" / f"cyseg-job-{job['id']}"
    out = json.loads((work / f"image-{seed.png}.geojson").read_text())
    height = 400
    png_annotations = [a for a in annotations if a["image"] == seed.png]
    assert len(out["features"]) == len(png_annotations)
    centres = sorted((round(p.centroid.x), round(p.centroid.y)) for p in
                     (flip_y(shapely_wkt.loads(a["location"]), height) for a in png_annotations))
    from shapely.geometry import shape

    assert centres == sorted((round(shape(f["geometry"]).centroid.x), round(shape(f["geometry"]).centroid.y))
                             for f in out["features"])
    # the job's parameters are saved (CLI run), keys never in the messages or outputs
    saved = {p["name"]: p["value"] for p in server.job_parameters(job["id"])}
    assert saved["cytomine_id_predicted_term"] == str(seed.terms["nucleus"]) and saved["tile_size"] == "256"
    assert saved["tta"] == "false"  # a Boolean saved as Cytomine writes it
    assert server.private_key not in done.stdout + done.stderr
    for path in work.rglob("*"):
        if path.is_file():
            assert server.private_key.encode() not in path.read_bytes()
    log = attached_log(server, job["id"])  # the run's log, attached as the job user
    assert f"job {job['id']}: {final}" in log and "RUNNING" in log and "upload complete" in log
    job_keys = server.user(job["user_job"])
    assert server.private_key not in log and job_keys["private_key"] not in log and job_keys["public_key"] not in log
    assert server.attached_files(job["id"])[0]["user"] == job["user_job"]


@LEGACY
def test_ui_run_uses_the_algo_users_job_and_segments_rois(tiny_model, cytomine_seed, software, tmp_path, monkeypatch):
    seed, server = cytomine_seed, cytomine_seed.server
    import cyseg.job as job_module

    used = []  # the engine options the job really ran with
    monkeypatch.setattr(job_module, "job_wsi_options",
                        lambda s, made=job_module.job_wsi_options: used.append(made(s)) or used[-1])
    roi_term = seed.terms["roi"]
    # two ROIs on the PNG (600 x 400) drawn in Cytomine's frame; one overlapping the image border
    server.add_annotation(seed.png, "POLYGON ((20 380, 220 380, 220 230, 20 230, 20 380))", term=roi_term)
    server.add_annotation(seed.png, "POLYGON ((500 150, 700 150, 700 -50, 500 -50, 500 150))", term=roi_term)
    job, user, argv = launched_argv(seed, software, model_path=tiny_model, cytomine_id_images=seed.png,
                                    cytomine_id_roi_term=roi_term, tta="true")
    assert "--cytomine_private_key" in argv and "THRESHOLD" in argv  # filled by the core; left empty
    launched = server.job_parameters(job)
    result = run_job([*argv, "--work_dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert [(o.tta, o.tile, o.overlap) for o in used] == [(True, 256, 32)]  # the TTA input reached the engine
    assert [j["id"] for j in server.jobs()] == [job]  # no new job
    history = server.job_history(job)
    check_history(history, SUCCESS)
    assert any("roi" in h["statusComment"] for h in history)
    annotations = server.annotations(image=seed.png, user=user)
    rois = [flip_y(box(20, 230, 220, 380), 400), box(500, 250, 600, 400)]  # top-left frame, clipped
    assert annotations and all(a["kind"] == "algo" for a in annotations)
    for a in annotations:
        polygon = flip_y(shapely_wkt.loads(a["location"]), 400)
        assert any(polygon.within(r.buffer(0.01)) for r in rois), polygon.bounds
    assert history[-1]["statusComment"] == f"Finished: {len(annotations)} annotations uploaded on 1 image."
    assert server.job_parameters(job) == launched  # a UI run's parameters are the UI's
    assert "Finished:" in attached_log(server, job)


@LEGACY
def test_failures_end_the_job_failed_with_the_message(tiny_model, cytomine_seed, software, tmp_path):
    seed, server = cytomine_seed, cytomine_seed.server
    # unknown predicted term
    job, _, public, private = server.add_job(seed.project, software)
    result = run_job(job_argv(seed, software, public, private, model_path=tiny_model,
                              cytomine_id_predicted_term=999999))
    assert result.exit_code == 2
    assert result.stderr.strip() == "cyseg: error: Cytomine term 999999 does not exist (HTTP 404); check the term id"
    history = server.job_history(job)
    check_history(history, FAILED)
    assert history[-1]["statusComment"] == "Cytomine term 999999 does not exist (HTTP 404); check the term id"
    log = attached_log(server, job)  # attached on failure too, with the message, without the keys
    assert f"job {job} failed: Cytomine term 999999 does not exist" in log and private not in log
    # a window the server keeps failing: named in the job's message
    job, _, public, private = server.add_job(seed.project, software)
    server.inject(r"/window-", 500, times=10_000)
    result = run_job([*job_argv(seed, software, public, private, model_path=tiny_model,
                                cytomine_id_images=str(seed.png)), "--work_dir", str(tmp_path / "w2")])
    server.clear_faults()
    assert result.exit_code == 2
    message = server.job_history(job)[-1]["statusComment"]
    assert server.job(job)["status"] == FAILED and f"Cytomine image {seed.png}: window x=0, y=0" in message
    assert len(message) <= 255 and private not in message and public not in message
    # a missing model file
    job, _, public, private = server.add_job(seed.project, software)
    result = run_job(job_argv(seed, software, public, private, model_path=tmp_path / "nope.pt"))
    assert result.exit_code == 2 and server.job(job)["status"] == FAILED
    assert "nope.pt does not exist" in server.job(job)["status_comment"]
    # wrong keys: one line, exit 2, nothing can be reported (and nothing created)
    before = server.jobs()
    result = run_job(job_argv(seed, software, server.public_key, "wrong-private-key", model_path=tiny_model))
    assert result.exit_code == 2 and "refused the keys" in result.stderr and "wrong-private-key" not in result.stderr
    assert server.jobs() == before
    # an unknown project: no job can be created for it
    result = run_job(job_argv(seed, software, server.public_key, server.private_key, model_path=tiny_model,
                              cytomine_id_project=999999))
    assert result.exit_code == 2 and "job of software" in result.stderr and "project 999999" in result.stderr
    assert server.jobs() == before
    # an image of another project
    other = server.add_project("other")
    foreign = server.add_image(other, seed.png_path)
    job, _, public, private = server.add_job(seed.project, software)
    result = run_job(job_argv(seed, software, public, private, model_path=tiny_model, cytomine_id_images=str(foreign)))
    assert result.exit_code == 2 and f"belongs to project {other}" in server.job(job)["status_comment"]
    assert server.annotations(project=seed.project) == []


@LEGACY
def test_nothing_found_succeeds_with_zero_annotations_and_stray_words_are_refused(tiny_model, cytomine_seed,
                                                                                  software, tmp_path):
    seed, server = cytomine_seed, cytomine_seed.server
    job, _, public, private = server.add_job(seed.project, software)
    result = run_job(job_argv(seed, software, public, private, model_path=tiny_model, threshold=1,
                              cytomine_id_images=str(seed.png)))
    assert result.exit_code == 0, result.output
    history = server.job_history(job)
    check_history(history, SUCCESS)
    assert history[-1]["statusComment"] == "Finished: 0 annotations (no cells found) on 1 image."
    assert history[-1]["progress"] == 100 and server.annotations() == []
    # CYSEG_MODEL names the model when model_path is left at 'default'
    os.environ["CYSEG_MODEL"] = str(tiny_model)
    try:
        job, _, public, private = server.add_job(seed.project, software)
        result = run_job(job_argv(seed, software, public, private, threshold=1, cytomine_id_images=str(seed.png)))
    finally:
        del os.environ["CYSEG_MODEL"]
    assert result.exit_code == 0 and server.job(job)["status"] == SUCCESS
    result = run_job([*job_argv(seed, software, public, private), "surprise"])
    assert result.exit_code == 2 and "unexpected argument 'surprise'" in result.stderr


@pytest.mark.parametrize("cytomine_profile", ["spring", "current"])
def test_a_core_without_job_api_is_named_in_one_line(cytomine_seed, tmp_path):
    seed, server = cytomine_seed, cytomine_seed.server
    argv = ["cyseg", "job", "--cytomine_host", server.url, "--cytomine_public_key", server.public_key,
            "--cytomine_private_key", server.private_key, "--cytomine_id_project", str(seed.project),
            "--cytomine_id_software", "1", "--work_dir", str(tmp_path / "work")]
    result = run_job(argv)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cyseg: error: Cytomine at {server.url} is "
                                                   f"{NAMES[server.profile.name]} and has no software/job API")
    assert lines[0].endswith("this needs a legacy (Grails) core")
    assert not (tmp_path / "work").exists()
    assert not [r for r in server.requests if "job" in r.path]  # nothing asked of a job API
    forced = run_job([*argv, "--cytomine-api", "legacy"])  # a wrong generation given: one line too
    assert forced.exit_code == 2 and "answers /server/ping like a Spring or current core" in forced.stderr
