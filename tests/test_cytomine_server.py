"""The local Cytomine test server, one profile per core generation (legacy, spring, current),
driven through the real cytomine-python-client (4.3.0).

Every request below is built by the client and signed as the profile's core verifies (the session
of `segmenter.cytomine.connection.cytomine_client`), or signed by hand where a test checks which
signatures a core refuses; the assertions read the server's SQLite store and request log. Tests run
once per profile, or on the profiles where the feature exists; the client's own quirks that matter
to cyseg are pinned here too.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import requests
import urllib3

pytest.importorskip("cytomine", reason="cytomine-python-client (4.x) is not installed")

from cytomine.cytomine import URLRedirectionException
from cytomine.models import (
    Annotation,
    AnnotationCollection,
    AnnotationTerm,
    AttachedFile,
    AttachedFileCollection,
    ImageInstance,
    ImageInstanceCollection,
    Model,
    Project,
    ProjectCollection,
    Property,
    PropertyCollection,
    TermCollection,
    User,
)
from cytomine.models._utilities.dump import DumpError
from cytomine.models.collection import CollectionPartialUploadException
from cytomine_server import CONNECTION_PARAMETERS, CytomineTestServer, authorization_header
from cytomine_server.fixtures import Seed, connect, disconnect, seed, set_timeout, slide_region
from shapely import wkt as shapely_wkt

RECT = "POLYGON ((100 100, 100 200, 250 200, 250 100, 100 100))"        # Cytomine frame (y up)
TRIANGLE = "POLYGON ((100 100, 250 100, 100 200, 100 100))"             # right angle at bottom-left (y up)


# --------------------------------------------------------------------------- helpers -----------
class Software(Model):
    """cytomine-python-client 4.x has no Software/Job models (removed in 3.1.0); these minimal
    models use the client's own Model machinery exactly as 2.x's did."""

    def __init__(self, **attributes):
        super().__init__()
        self.populate(attributes)


class Job(Model):
    def __init__(self, id_project=None, id_software=None, **attributes):
        super().__init__()
        self.project = id_project
        self.software = id_software
        self.populate(attributes)


class JobParameter(Model):
    def __init__(self, id_job=None, id_software_parameter=None, value=None, **attributes):
        super().__init__()
        self.job = id_job
        self.softwareParameter = id_software_parameter
        self.value = value
        self.populate(attributes)


def read_rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return img


def last(server: CytomineTestServer, path_part: str):
    return [r for r in server.requests if path_part in r.path][-1]


def ids(collection) -> set[int]:
    return {a.id for a in collection}


LEGACY_ONLY = pytest.mark.parametrize("cytomine_profile", ["legacy"])
NOT_LEGACY = pytest.mark.parametrize("cytomine_profile", ["spring", "current"])


def path_signed(server: CytomineTestServer) -> bool:
    return server.profile.name != "current"


def raw_get(server: CytomineTestServer, target: str, *, with_path: bool, content_type: str = "",
            signed_type: str | None = None, method: str = "GET", body: bytes | None = None, **headers: str):
    """A request signed by hand with one token variant, redirects not followed."""
    date = "Mon, 01 Jan 2001 00:00:00 +0000"  # never compared with the clock
    auth = authorization_header(server.public_key, server.private_key, method,
                                content_type if signed_type is None else signed_type, date,
                                target if with_path else None)
    sent = {"date": date, "authorization": auth, **headers}
    if content_type:
        sent["content-type"] = content_type
    return requests.request(method, f"{server.url}{target}", headers=sent, data=body, allow_redirects=False,
                            timeout=10)


# --------------------------------------------------------------------------- connection / auth --
def test_connect_pings_then_fetches_current_user(cytomine_seed: Seed):
    server = cytomine_seed.server
    client = connect(server)
    try:
        assert client.current_user.id == server.user_id
        assert client.current_user.username == "testuser"
        first, second = server.requests[:2]
        assert (first.method, first.path, first.status) == ("GET", "/server/ping", 200)
        assert (second.path, second.status) == ("/api/user/current.json", 200)
        assert second.auth == ("with-path" if path_signed(server) else "no-path")
        response = client._get(f"project/{cytomine_seed.project}.json", None)
        assert response.headers["Cache-Control"] == "no-store"
        assert response.json()["class"] == ("be.cytomine.project.Project" if server.profile.legacy
                                            else "be.cytomine.domain.project.Project")
    finally:
        disconnect(client)


def test_ping_tells_the_generations_apart(cytomine_server: CytomineTestServer):
    server = cytomine_server
    ping = requests.get(f"{server.url}/server/ping", timeout=10)
    assert ping.status_code == 200 and ping.json()["alive"] is True
    assert ("authenticated" in ping.json()) is server.profile.legacy  # only the Grails core says it
    dotted = requests.get(f"{server.url}/server/ping.json", timeout=10).status_code
    posted = requests.post(f"{server.url}/server/ping", timeout=10).status_code
    if server.profile.name == "current":  # the alias is gone, and the ping is GET-only
        assert (dotted, posted) == (404, 405)
    else:
        assert (dotted, posted) == (200, 200)


def test_each_core_verifies_one_signature_style(cytomine_server: CytomineTestServer):
    server = cytomine_server
    own = path_signed(server)
    assert raw_get(server, "/api/user/current.json", with_path=own).status_code == 200
    other = raw_get(server, "/api/user/current.json", with_path=not own)
    if server.profile.legacy:  # a bad signature leaves the request anonymous: the login page
        assert other.status_code == 302 and other.headers["Location"].endswith("/login/auth")
        nopage = raw_get(server, "/api/user/current.json", with_path=False, nopage="true")
        assert nopage.status_code == 401
    else:
        assert other.status_code == 401 and "Cytomine error 401" in other.text
    # the query string is part of the path-signed message
    assert raw_get(server, "/api/project.json?max=0&offset=0", with_path=own).status_code == 200
    # a content type signed as empty: the Spring and current cores try that too, the Grails core does not
    posted = raw_get(server, "/api/ontology.json", with_path=own, content_type="application/json", signed_type="")
    assert (posted.status_code == 200) is (not server.profile.legacy)
    unknown = requests.get(f"{server.url}/api/project.json", timeout=10, allow_redirects=False,
                           headers={"date": "x", "authorization": "CYTOMINE nobody:c2ln"})
    assert unknown.status_code == 401  # an unknown key is refused on every core


def test_wrong_keys_are_refused(cytomine_seed: Seed):
    server = cytomine_seed.server
    if server.profile.legacy:  # the client's start-up fetch meets the redirect to the login page
        with pytest.raises(URLRedirectionException):
            connect(server, server.public_key, "not-the-private-key")
        disconnect()
    else:
        client = connect(server, server.public_key, "not-the-private-key")
        try:
            assert client.current_user is False  # the client does not raise: connect "succeeds"
            assert last(server, "/api/user/current.json").status == 401
            assert Project().fetch(cytomine_seed.project) is False
        finally:
            disconnect(client)
    client = connect(server, "unknown-public-key", server.private_key)
    try:
        assert client.current_user is False
        assert last(server, "/api/user/current.json").status == 401
    finally:
        disconnect(client)


def test_client_4x_signing_works_only_on_the_current_core(cytomine_seed: Seed):
    """Unchanged, client 4.x signs without the path: only the current core accepts it."""
    server = cytomine_seed.server
    client = connect(server, generation="current") if server.profile.name == "current" else None
    if client is None:
        from cytomine import Cytomine

        try:
            client = Cytomine(server.url, server.public_key, server.private_key, configure_logging=False)
        except URLRedirectionException:  # legacy: redirected to the login page
            disconnect()
            return
    try:
        assert (client.current_user is not False) is (server.profile.name == "current")
    finally:
        disconnect(client)


# --------------------------------------------------------------------------- projects / images --
def test_projects_terms_and_images(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    projects = ProjectCollection().fetch()
    assert [p.id for p in projects] == [s.project]
    project = Project().fetch(s.project)
    assert project.name == "cyseg-test" and project.ontology == s.ontology
    terms = TermCollection().fetch_with_filter("project", s.project)
    assert {t.name: t.id for t in terms} == s.terms
    assert {t.id for t in TermCollection().fetch_with_filter("ontology", s.ontology)} == set(s.terms.values())
    roi = cytomine_client._get(f"term/{s.terms['roi']}.json", None).json()
    assert roi["color"] == "#FF0000"
    assert (roi.get("ontology"), roi.get("ontologyId")) == ((None, s.ontology) if server.profile.repository
                                                          else (s.ontology, None))

    images = ImageInstanceCollection().fetch_with_filter("project", s.project)
    assert {i.id for i in images} == {s.image, s.png}
    image = ImageInstance().fetch(s.image)
    assert (image.width, image.height) == (1000, 700)
    if server.profile.legacy:  # Grails: resolution, depth = zoom levels, no slices
        assert image.resolution == pytest.approx(0.25) and image.depth == 2 and image.physicalSizeX is None
        assert image.thumb.endswith(f"/api/abstractimage/{image.baseImage}/thumb.png?maxSize=512")
        assert cytomine_client._get(f"imageinstance/{s.image}/sliceinstance/reference.json", None).status_code == 404
    else:
        assert image.physicalSizeX == pytest.approx(0.25) and getattr(image, "resolution", None) is None
        assert (image.depth, image.zoom) == (1, 2)
        ref = image.reference_slice()
        assert ref.image == s.image and ref.imageServerUrl == server.url and ref.path == str(s.image_path)
    assert image.originalFilename == image.instanceFilename == "ihc-pyramid.tiff"
    assert image.project == s.project and image.baseImage is not None

    assert ImageInstance().fetch(987654) is False
    assert last(server, "/api/imageinstance/987654.json").status == 404
    message = cytomine_client._get("imageinstance/987654.json", None).json()["errors"]["message"]
    assert message == ("ImageInstance not found with id : 987654" if server.profile.legacy
                       else "ImageInstance not found with filters : {id=987654}")
    unknown = cytomine_client._get("nothing/here.json", None)
    assert unknown.status_code == 404 and ("Cytomine error 404" in unknown.text) is server.profile.html_errors
    assert cytomine_client._post(f"imageinstance/{s.image}.json").status_code == 405


@pytest.mark.parametrize("cytomine_profile", ["current"])
def test_current_core_pages_terms_twenty_at_a_time(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    extra = [s.server.add_term(f"t{i}", s.ontology) for i in range(22)]
    # the client asks for max=0 (all): the repository endpoint ignores it and answers one page of 20
    assert len(TermCollection().fetch_with_filter("project", s.project)) == 20
    page = cytomine_client._get(f"project/{s.project}/term.json", {"page": 1, "size": 20}).json()
    assert (page["size"], page["totalPages"], len(page["collection"])) == (25, 2, 5)
    assert page["collection"][-1]["id"] == extra[-1]
    for uri in ("term/987654.json", "project/987654.json"):  # ResponseStatusException: the error page
        missing = cytomine_client._get(uri, None)
        assert missing.status_code == 404 and "Cytomine error 404" in missing.text, uri


def test_app_engine_endpoints_from_spring_5_1(cytomine_server: CytomineTestServer, cytomine_sample_slide,
                                              cytomine_sample_png):
    server = cytomine_server
    client = connect(server)
    try:
        answer = client._get("app-engine/tasks", None)
        assert (answer.status_code == 200) is (server.profile.name != "legacy")
    finally:
        disconnect(client)
    if server.profile.name == "spring":
        with CytomineTestServer(profile="spring", version="4.4.7") as old:
            client = connect(old)
            try:
                assert client._get("app-engine/tasks", None).status_code == 404
                s = seed(old, cytomine_sample_slide, cytomine_sample_png)
                assert client._get(f"imageinstance/{s.image}/thumb.png", None).status_code == 200  # no token yet
            finally:
                disconnect(client)


# --------------------------------------------------------------------------- windows / thumbs ---
@pytest.mark.parametrize("which", ["tiff", "png"])
def test_window_pixels_match_openslide(cytomine_seed: Seed, cytomine_client, tmp_path, which):
    s = cytomine_seed
    image_id, path = (s.image, s.image_path) if which == "tiff" else (s.png, s.png_path)
    image = ImageInstance().fetch(image_id)
    x, y, w, h = 37, 51, 300, 200
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "w.png"))
    assert np.array_equal(read_rgb(tmp_path / "w.png"), slide_region(path, x, y, w, h))
    rec = last(s.server, "/window-")
    assert rec.path == f"/api/imageinstance/{image_id}/window-{x}-{y}-{w}-{h}.png" and rec.status == 200

    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "w.jpg"))  # lossy, same geometry
    jpg = read_rgb(tmp_path / "w.jpg")
    assert jpg.shape == (h, w, 3)
    assert np.abs(jpg.astype(int) - slide_region(path, x, y, w, h)).mean() < 6

    legacy = s.server.profile.legacy
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "m.png"), max_size=150)
    assert read_rgb(tmp_path / "m.png").shape == ((100, 150, 3) if legacy else (h, w, 3))  # maxSize ignored

    # a window crossing the right/bottom border: clipped by the Grails core, refused by PIMS
    edge = image.window(image.width - 50, image.height - 30, 200, 200, dest_pattern=str(tmp_path / "edge.png"))
    assert edge is legacy and (not legacy or read_rgb(tmp_path / "edge.png").shape == (30, 50, 3))
    assert not image.window(image.width + 10, 0, 20, 20, dest_pattern=str(tmp_path / "out.png"))


def test_window_zoom_is_honoured_by_the_legacy_core_only(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    image = ImageInstance().fetch(s.image)
    assert image.window(100, 60, 400, 300, dest_pattern=str(tmp_path / "z1.png"), zoom=1)
    if s.server.profile.legacy:
        assert np.array_equal(read_rgb(tmp_path / "z1.png"), slide_region(s.image_path, 100, 60, 200, 150, level=1))
    else:  # the Spring and current cores answer full-resolution pixels whatever zoom says
        assert np.array_equal(read_rgb(tmp_path / "z1.png"), slide_region(s.image_path, 100, 60, 400, 300))


@NOT_LEGACY
def test_crop_scales_a_rectangle_to_max_size(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    location = "POLYGON ((100 340, 500 340, 500 640, 100 640, 100 340))"  # top-left (100, 60), 400 x 300
    assert cytomine_client.download_file(f"imageinstance/{s.image}/crop.png", str(tmp_path / "c.png"), override=True,
                                         payload={"location": location, "maxSize": 200})
    crop = read_rgb(tmp_path / "c.png")
    assert crop.shape == (150, 200, 3)
    level1 = slide_region(s.image_path, 100, 60, 200, 150, level=1)
    assert np.abs(crop.astype(int) - level1.astype(int)).mean() < 4
    assert cytomine_client.download_file(f"imageinstance/{s.image}/crop.png", str(tmp_path / "d.png"), override=True,
                                         payload={"location": location})
    assert read_rgb(tmp_path / "d.png").shape == (192, 256, 3)  # maxSize defaults to 256


@LEGACY_ONLY
def test_window_masks_rasterise_annotations_bottom_left_origin(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    server = s.server
    other, _, _ = server.add_user("other")
    rect = server.add_annotation(s.image, RECT, s.terms["nucleus"])
    server.add_annotation(s.image, "POLYGON ((600 600, 600 650, 700 650, 700 600, 600 600))", s.terms["roi"])
    server.add_annotation(s.image, "POLYGON ((300 100, 300 200, 350 200, 350 100, 300 100))", s.terms["nucleus"],
                          user=other)
    image = ImageInstance().fetch(s.image)
    x, y, w, h = 50, 450, 400, 200  # top-left frame; the image is 700 high
    expected = np.zeros((h, w), np.uint8)
    expected[700 - 200 - y:700 - 100 - y, 100 - x:250 - x] = 255  # RECT: y 100..200 up -> rows 500..600 down

    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "t.png"), mask=True, terms=[s.terms["nucleus"]],
                        users=[server.user_id])
    assert np.array_equal(read_rgb(tmp_path / "t.png"), expected)
    assert last(server, "/window-").query["mask"] == "true"
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "a.png"), mask=True, annotations=[rect])
    assert np.array_equal(read_rgb(tmp_path / "a.png"), expected)
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "u.png"), mask=True, users=[other])
    assert read_rgb(tmp_path / "u.png")[700 - 150 - y, 325 - x] == 255
    assert read_rgb(tmp_path / "u.png").sum() == 255 * 50 * 100
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "none.png"), mask=True, terms=[s.terms["cluster"]])
    assert read_rgb(tmp_path / "none.png").max() == 0

    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "alpha.jpg"), alpha=True, annotations=[rect])
    rgba = read_rgb(tmp_path / "alpha.png")  # the client switches jpg to png for alpha
    assert rgba.shape == (h, w, 4)
    assert np.array_equal(rgba[:, :, 3], expected)
    assert np.array_equal(rgba[:, :, :3], slide_region(s.image_path, x, y, w, h))

    tri = server.add_annotation(s.image, TRIANGLE)
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "tri.png"), mask=True, annotations=[tri])
    rows = (read_rgb(tmp_path / "tri.png") > 0).sum(axis=1)[700 - 200 - y:700 - 100 - y]
    assert rows[0] < rows[-1]  # wide side at Cytomine y=100, i.e. at the bottom of the picture


@NOT_LEGACY
def test_window_masks_are_ignored(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    s.server.add_annotation(s.image, RECT)
    image = ImageInstance().fetch(s.image)
    assert image.window(0, 0, 64, 64, dest_pattern=str(tmp_path / "m.png"), mask=True)
    assert np.array_equal(read_rgb(tmp_path / "m.png"), slide_region(s.image_path, 0, 0, 64, 64))


def test_thumbnails_and_normalized_tiles(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    p = s.server.profile
    image = ImageInstance().fetch(s.image)
    # the client's dump() reads the image-instance thumbnail: no such route on the Grails core, a
    # browser token needed from Spring 5.2 on
    with pytest.raises(DumpError):
        image.dump(str(tmp_path / "thumb.png"), max_size=200)
    abstract = cytomine_client.download_file(f"abstractimage/{image.baseImage}/thumb.png", str(tmp_path / "a.png"),
                                             override=True, payload={"maxSize": 200})
    assert abstract is p.legacy
    if p.legacy:
        assert read_rgb(tmp_path / "a.png").shape == (140, 200, 3)
        assert not cytomine_client.download_file(f"sliceinstance/{s.image}/normalized-tile/zoom/0/tx/0/ty/0.png",
                                                 str(tmp_path / "t.png"), override=True)
        return
    ref = image.reference_slice()  # the slice thumbnail needs no token
    assert cytomine_client.download_file(f"sliceinstance/{ref.id}/thumb.png", str(tmp_path / "s.png"), override=True,
                                         payload={"maxSize": 200})
    assert read_rgb(tmp_path / "s.png").shape == (140, 200, 3)
    assert cytomine_client.download_file(f"sliceinstance/{ref.id}/normalized-tile/zoom/2/tx/1/ty/0.png",
                                         str(tmp_path / "tile.png"), override=True)
    assert np.array_equal(read_rgb(tmp_path / "tile.png"), slide_region(s.image_path, 256, 0, 256, 256))
    assert cytomine_client.download_file(f"sliceinstance/{ref.id}/normalized-tile/zoom/0/tx/0/ty/0.jpg",
                                         str(tmp_path / "t0.jpg"), override=True)
    assert read_rgb(tmp_path / "t0.jpg").shape == (175, 250, 3)
    assert not cytomine_client.download_file(f"sliceinstance/{ref.id}/normalized-tile/zoom/2/tx/9/ty/0.jpg",
                                             str(tmp_path / "bad.jpg"), override=True)


def test_real_svs_slide(cytomine_server, cytomine_client, cmu_small_region, tmp_path):
    server = cytomine_server
    project = server.add_project("svs")
    image_id = server.add_image(project, cmu_small_region)
    image = ImageInstance().fetch(image_id)
    slide = openslide.open_slide(str(cmu_small_region))
    assert (image.width, image.height) == slide.dimensions
    assert image.magnification == int(float(slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER]))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    assert (image.physicalSizeX or image.resolution) == pytest.approx(mpp)
    slide.close()
    x, y, w, h = 1000, 1500, 512, 384
    assert image.window(x, y, w, h, dest_pattern=str(tmp_path / "w.png"))
    assert np.array_equal(read_rgb(tmp_path / "w.png"), slide_region(cmu_small_region, x, y, w, h))
    annotation = server.add_annotation(image_id, "POLYGON ((1000 1000, 1000 1100, 1200 1100, 1200 1000, 1000 1000))")
    crop = Annotation().fetch(annotation)
    assert crop.dump(str(tmp_path / "{id}.png"), max_size=200)
    top = image.height - 1100
    assert np.array_equal(read_rgb(crop.filename), slide_region(cmu_small_region, 1000, top, 200, 100))


# --------------------------------------------------------------------------- annotations: read --
@pytest.fixture
def layers(cytomine_seed: Seed):
    """Annotations of three users (admin, another human and, on the legacy core, a job's algo
    user; elsewhere a third human) on the two images."""
    s = cytomine_seed
    server = s.server
    other, _, _ = server.add_user("other")
    job = software = None
    if server.profile.jobs:
        software = server.add_software("cyseg-predict", [("threshold", "Number", 0.5)])
        job, algo, _, _ = server.add_job(s.project, software)
    else:
        algo, _, _ = server.add_user("third")
    t = s.terms
    a = {
        "a1": server.add_annotation(s.image, "POLYGON ((10 10, 10 60, 60 60, 60 10, 10 10))", t["nucleus"]),
        "a2": server.add_annotation(s.image, "POLYGON ((500 500, 500 600, 600 600, 600 500, 500 500))",
                                    [t["nucleus"], t["cluster"]]),
        "a3": server.add_annotation(s.image, "POLYGON ((800 100, 800 200, 900 200, 900 100, 800 100))"),
        "a4": server.add_annotation(s.image, "POLYGON ((100 300, 100 600, 400 600, 400 300, 100 300))", t["roi"],
                                    user=other),
        "a5": server.add_annotation(s.png, "POLYGON ((5 5, 5 50, 50 50, 50 5, 5 5))", t["nucleus"]),
        "a6": server.add_annotation(s.image, "POLYGON ((20 20, 20 40, 40 40, 40 20, 20 20))", t["nucleus"], user=algo),
    }
    s.extra.update(other=other, job=job, algo=algo, software=software, **a)
    return s


def test_annotation_listing_filters(layers: Seed, cytomine_client):
    s, e, t = layers, layers.extra, layers.terms
    fetch = lambda **kw: ids(AnnotationCollection(**kw).fetch())  # noqa: E731
    fetch(project=s.project)
    q = last(s.server, "/api/annotation.json").query
    assert q == {"max": "0", "offset": "0", "showBasic": "True", "showMeta": "True", "project": str(s.project),
                 "included": "False"}
    # a6 is the job user's on the legacy core (an algo layer, listed only when a user filter names
    # that user, or with includeAlgo); elsewhere a third human's, listed with the others
    six = set() if s.server.profile.legacy else {e["a6"]}
    assert fetch(project=s.project) == {e["a1"], e["a2"], e["a3"], e["a4"], e["a5"]} | six
    assert fetch(image=s.image, users=[s.server.user_id, e["other"]]) == {e["a1"], e["a2"], e["a3"], e["a4"]}
    assert fetch(project=s.project, images=[s.image, s.png]) == {e["a1"], e["a2"], e["a3"], e["a4"], e["a5"]} | six
    assert fetch(project=s.project, term=t["nucleus"]) == {e["a1"], e["a2"], e["a5"]} | six
    assert fetch(project=s.project, terms=[t["cluster"], t["roi"]]) == {e["a2"], e["a4"]}
    assert fetch(project=s.project, user=e["other"]) == {e["a4"]}
    assert fetch(project=s.project, noTerm=True) == {e["a3"]}
    assert fetch(project=s.project, multipleTerm=True) == {e["a2"]}
    assert fetch(project=s.project, user=e["algo"]) == {e["a6"]}
    assert fetch(project=s.project, users=[e["algo"], e["other"]]) == {e["a6"], e["a4"]}
    assert fetch(project=s.project, includeAlgo=True) == {e["a1"], e["a2"], e["a3"], e["a4"], e["a5"], e["a6"]}
    # bbox in the Cytomine frame, as "minx,miny,maxx,maxy" or WKT
    assert fetch(image=s.image, bbox="0,0,100,100") == {e["a1"]} | six
    assert fetch(image=s.image, bbox="POLYGON ((450 450, 450 650, 650 650, 650 450, 450 450))") == {e["a2"]}
    assert fetch(image=s.image, user=e["algo"], bbox="0,0,100,100") == {e["a6"]}
    assert AnnotationCollection(image=s.image, bbox="not a box").fetch() is False
    assert last(s.server, "/api/annotation.json").status == 400


def test_annotation_listing_property_groups_and_pages(layers: Seed, cytomine_client):
    s, e = layers, layers.extra
    plain = {a.id: a for a in AnnotationCollection(image=s.image).fetch()}
    assert plain[e["a2"]].location is None and plain[e["a2"]].term is None  # not asked for
    assert plain[e["a2"]].cropURL == f"{s.server.url}/api/userannotation/{e['a2']}/crop.png"
    assert plain[e["a2"]].class_ == ("be.cytomine.ontology.UserAnnotation" if s.server.profile.legacy
                                     else "be.cytomine.domain.ontology.UserAnnotation")
    full = {a.id: a for a in AnnotationCollection(image=s.image, showWKT=True, showTerm=True, showGIS=True).fetch()}
    a2 = full[e["a2"]]
    assert shapely_wkt.loads(a2.location).equals(shapely_wkt.loads(s.server.annotation(e["a2"])["location"]))
    assert sorted(a2.term) == sorted([s.terms["nucleus"], s.terms["cluster"]])
    assert a2.area == pytest.approx(100 * 100 * 0.25 ** 2) and a2.areaUnit == "micron²"
    assert a2.perimeter == pytest.approx(400 * 0.25 / 1000) and a2.perimeterUnit == "mm"
    assert (a2.x, a2.y) == (550, 550)

    page = cytomine_client.get("annotation.json", {"project": s.project, "max": 2, "offset": 1,
                                                   "users": f"{s.server.user_id},{e['other']}"})
    assert (len(page["collection"]), page["size"], page["offset"], page["perPage"], page["totalPages"]) == (2, 5, 1, 2,
                                                                                                            3)
    assert [a["id"] for a in page["collection"]] == [e["a4"], e["a3"]]  # id descending, second and third
    # the client's paginated fetch skips the last partial page (5 items, pages of 2 -> 4 items)
    assert len(AnnotationCollection(project=s.project, users=[s.server.user_id, e["other"]]).fetch(max=2)) == 4
    # included annotations: the client builds "annotation/included.json" (its "imageinstance" path
    # filter is not an allowed filter), a route no core has, so the fetch fails...
    square = "POLYGON ((0 0, 0 100, 100 100, 100 0, 0 0))"
    assert AnnotationCollection(image=s.image, included=True, geometry=square).fetch() is False
    assert last(s.server, "/included.json").path == "/api/annotation/included.json"
    # ...while the core's route answers
    inside = cytomine_client.get(f"imageinstance/{s.image}/annotation/included.json",
                                 {"geometry": square, "user": s.server.user_id})
    assert [a["id"] for a in inside["collection"]] == [e["a1"]]


def test_annotation_fetch_crop_mask_alphamask(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    server = s.server
    rect = server.add_annotation(s.image, RECT, s.terms["nucleus"])
    tri = server.add_annotation(s.image, TRIANGLE, s.terms["nucleus"])
    a = Annotation().fetch(rect)
    assert a.location == RECT and a.term == [s.terms["nucleus"]] and a.image == s.image and a.project == s.project
    assert a.cropURL == f"{server.url}/api/userannotation/{rect}/crop.png"
    assert a.centroid == {"x": 175.0, "y": 150.0}
    assert Annotation().fetch(999999) is False

    assert a.dump(str(tmp_path / "{id}.png"))
    # every core: full resolution unless asked, zoom honoured (annotation crops have no default
    # maxSize, unlike the Spring and current cores' image crops)
    assert np.array_equal(read_rgb(a.filename), slide_region(s.image_path, 100, 500, 150, 100))
    assert a.dump(str(tmp_path / "{id}-z1.png"), zoom=1)
    assert read_rgb(a.filename).shape == (50, 75, 3)
    assert last(server, "/crop.png").query["zoom"] == "1"
    assert a.dump(str(tmp_path / "{id}-small.png"), max_size=75)
    assert read_rgb(a.filename).shape == (50, 75, 3)
    assert last(server, "/crop.png").query["maxSize"] == "75"
    assert a.dump(str(tmp_path / "{id}-mask.png"), mask=True, max_size=150)
    assert last(server, "/mask.png").path == f"/api/userannotation/{rect}/mask.png"
    assert np.all(read_rgb(a.filename) == 255) and read_rgb(a.filename).shape == (100, 150)
    t = Annotation().fetch(tri)
    assert t.dump(str(tmp_path / "{id}-alpha.jpg"), mask=True, alpha=True, max_size=150)
    assert last(server, "/alphamask.png").path == f"/api/userannotation/{tri}/alphamask.png"
    # the client asks for PNG but keeps the requested name: PNG bytes in a ".jpg" file
    assert t.filename.endswith(".jpg") and Path(t.filename).read_bytes()[:4] == b"\x89PNG"
    rgba = read_rgb(t.filename)
    assert rgba.shape == (100, 150, 4)
    rows = (rgba[:, :, 3] > 0).sum(axis=1)
    assert rows[0] < rows[-1] and rows[-1] >= 148  # y up: the wide side (y=100) is the bottom row
    assert np.array_equal(rgba[:, :, :3], slide_region(s.image_path, 100, 500, 150, 100))

    server.inject(r"/crop\.png", 500)
    with pytest.raises(DumpError):
        a.dump(str(tmp_path / "{id}-fail.png"))


# --------------------------------------------------------------------------- annotations: write -
def test_save_single_annotation_validates_and_clips(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    saved = Annotation(location=RECT, id_image=s.image, id_project=s.project, id_terms=[s.terms["nucleus"]]).save()
    assert saved and saved.id is not None and saved.term == [s.terms["nucleus"]]
    row = server.annotation(saved.id)
    assert (row["kind"], row["user"], row["image"], row["project"], row["terms"]) == \
        ("user", server.user_id, s.image, s.project, [s.terms["nucleus"]])
    assert shapely_wkt.loads(row["location"]).equals(shapely_wkt.loads(RECT))
    body = json.loads(last(server, "/api/annotation.json").body)
    assert body == {"location": RECT, "image": s.image, "project": s.project, "term": [s.terms["nucleus"]]}

    # outside parts are cut off at the image border (1000 x 700)
    clipped = Annotation(location="POLYGON ((900 600, 900 800, 1100 800, 1100 600, 900 600))", id_image=s.image).save()
    assert shapely_wkt.loads(server.annotation(clipped.id)["location"]).equals(
        shapely_wkt.loads("POLYGON ((900 600, 900 700, 1000 700, 1000 600, 900 600))"))
    assert server.annotation(clipped.id)["project"] == s.project  # taken from the image
    assert Annotation(location="POINT (10 10)", id_image=s.image).save()  # a point is a 100 x 100 box

    before = len(server.annotations())
    bad = [("POLYGON ((0 0, 10", 400),                                              # not WKT
           ("POLYGON ((0 0, 10 10, 10 0, 0 10, 0 0))", 400),                        # self-intersecting
           ("POLYGON ((1100 100, 1100 200, 1200 200, 1200 100, 1100 100))", 400),   # nothing left after clipping
           ("POLYGON ((10 10, 10 10.5, 20 10.5, 20 10, 10 10))", 400),              # height truncates to 0
           ("", 400)]
    for location, status in bad:
        assert Annotation(location=location, id_image=s.image).save() is False
        assert last(server, "/api/annotation.json").status == status, location
    assert Annotation(location=RECT, id_image=123456).save() is False
    assert last(server, "/api/annotation.json").status == 404
    assert Annotation(location=RECT, id_image=s.image, id_terms=[424242]).save() is False
    assert last(server, "/api/annotation.json").status == 404
    assert len(server.annotations()) == before
    error = cytomine_client._post("annotation.json", json.dumps({"location": "nope", "image": s.image})).json()
    assert error == {"success": False, "errors": "Annotation location is not valid"}

    # term added afterwards, update and delete by the owner
    assert AnnotationTerm(saved.id, s.terms["cluster"]).save()
    assert server.annotation(saved.id)["terms"] == [s.terms["nucleus"], s.terms["cluster"]]
    saved.location = "POLYGON ((0 0, 0 30, 30 30, 30 0, 0 0))"
    assert saved.update()
    assert server.annotation(saved.id)["location"] == "POLYGON ((0 0, 0 30, 30 30, 30 0, 0 0))"
    assert saved.delete() and server.annotation(saved.id) is None


def test_save_annotation_collection_chunks(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    collection = AnnotationCollection()
    for i in range(20):
        collection.append(Annotation(location=f"POLYGON (({i * 40} 0, {i * 40} 30, {i * 40 + 30} 30, "
                                              f"{i * 40 + 30} 0, {i * 40} 0))",
                                     id_image=s.image, id_project=s.project, id_terms=[s.terms["nucleus"]]))
    assert collection.save(chunk=15, n_workers=2) is True
    stored = server.annotations(image=s.image)
    assert len(stored) == 20 and all(a["terms"] == [s.terms["nucleus"]] for a in stored)
    posts = [r for r in server.requests if r.method == "POST"]
    assert sorted(len(json.loads(r.body)) for r in posts) == [5, 15] and {r.status for r in posts} == {200}

    # a chunk count that divides the size exactly makes the client post one more, empty, chunk
    server.clear_requests()
    exact = AnnotationCollection()
    exact.extend([Annotation(location=RECT, id_image=s.png)] * 3)
    assert exact.save(chunk=3, n_workers=1) is True
    assert [r.body for r in server.requests if r.method == "POST"][-1] == b"[]"


@LEGACY_ONLY
def test_save_annotation_collection_partial_206_and_none_400(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    good = [Annotation(location=RECT, id_image=s.image) for _ in range(3)]
    bad = [Annotation(location="POLYGON ((0 0, 1", id_image=s.image) for _ in range(2)]
    collection = AnnotationCollection()
    collection.extend(good[:2] + bad[:1] + bad[1:] + good[2:])
    with pytest.raises(CollectionPartialUploadException) as info:
        collection.save(chunk=3, n_workers=1)  # chunks: [good good bad] [bad good]
    assert len(info.value.created) == 0 and len(info.value.failed) == 5  # per chunk, whole chunks "fail"
    statuses = sorted(r.status for r in server.requests if r.method == "POST")
    assert statuses == [206, 206]
    assert len(server.annotations()) == 3  # what the chunks did save stays saved

    none = AnnotationCollection()
    none.extend(bad)
    with pytest.raises(CollectionPartialUploadException):
        none.save(chunk=5, n_workers=1)
    assert [r for r in server.requests if r.method == "POST"][-1].status == 400


@NOT_LEGACY
def test_partial_save_answers_200_with_the_status_in_the_body(cytomine_seed: Seed, cytomine_client):
    """The Spring and current cores answer HTTP 200 for arrays and put 206/400 in the body: the
    client then reports success although entries were refused."""
    s = cytomine_seed
    server = s.server
    collection = AnnotationCollection()
    collection.extend([Annotation(location=RECT, id_image=s.image),
                       Annotation(location="POLYGON ((0 0, 1", id_image=s.image)])
    assert collection.save(chunk=15, n_workers=1) is True
    assert len(server.annotations()) == 1
    post = next(r for r in server.requests if r.method == "POST")
    reply = cytomine_client._post("annotation.json", json.dumps([{"location": "x", "image": s.image}]))
    assert post.status == 200 and reply.status_code == 200 and reply.json()["status"] == 400
    assert reply.json()["data"]["message"] == "No entry saved"


# --------------------------------------------------------------------------- jobs ---------------
@LEGACY_ONLY
def test_job_lifecycle_status_history_and_algo_annotations(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    sid = server.add_software("cyseg-predict", [("threshold", "Number", 0.5), ("cytomine_id_images", "ListDomain")])
    software = Software().fetch(sid)
    assert software.name == "cyseg-predict"
    assert [p["name"] for p in software.parameters][-2:] == ["threshold", "cytomine_id_images"]
    all_params = cytomine_client.get(f"software/{sid}/software_parameter.json", {"withSetByServer": True})
    own_params = cytomine_client.get(f"software/{sid}/software_parameter.json")
    assert all_params["size"] == 7 and [p["name"] for p in own_params["collection"]] == ["threshold",
                                                                                         "cytomine_id_images"]
    job = Job(s.project, sid).save()
    assert job and job.status == 0 and job.userJob is not None and job.number == 1
    assert server.job(job.id)["user_job"] == job.userJob
    user_job = User().fetch(job.userJob)  # the job's creator may read the algo user's keys
    assert user_job.algo is True and user_job.job == job.id and user_job.privateKey

    for param in own_params["collection"]:
        value = 0.7 if param["name"] == "threshold" else None
        assert JobParameter(job.id, param["id"], value).save()
    assert server.job_parameters(job.id) == [
        {"id": server.job_parameters(job.id)[0]["id"], "name": "threshold", "value": "0.7",
         "softwareParameter": own_params["collection"][0]["id"]},
        {"id": server.job_parameters(job.id)[1]["id"], "name": "cytomine_id_images", "value": None,
         "softwareParameter": own_params["collection"][1]["id"]}]
    assert cytomine_client.get(f"job/{job.id}/jobparameter.json")["size"] == 2

    # run as the algo user, as a Cytomine app does
    cytomine_client.set_credentials(user_job.publicKey, user_job.privateKey)
    assert cytomine_client.current_user.id == job.userJob and cytomine_client.current_user.algo
    job = Job().fetch(job.id)
    assert job.update(status=2, progress=0, statusComment="Initialization...")
    for i in (1, 2):
        assert job.update(progress=50 * i, statusComment=f"Segmenting ({i}/2).")
    collection = AnnotationCollection()
    collection.extend([Annotation(location=RECT, id_image=s.image, id_terms=[s.terms["nucleus"]]),
                       Annotation(location=TRIANGLE, id_image=s.image, id_terms=[s.terms["nucleus"]])])
    assert collection.save()
    assert job.update(status=3, progress=100, statusComment="Finished.")
    assert [(h["status"], h["progress"], h["statusComment"]) for h in server.job_history(job.id)][:4] == [
        (2, 0, "Initialization..."), (2, 50, "Segmenting (1/2)."), (2, 100, "Segmenting (2/2)."),
        (3, 100, "Finished.")]
    assert {h["user"] for h in server.job_history(job.id)[:4]} == {job.userJob}
    algo = server.annotations(user=job.userJob)
    assert len(algo) == 2 and {a["kind"] for a in algo} == {"algo"}

    assert job.update(status=42) is False and last(server, f"/api/job/{job.id}.json").status == 400
    assert job.update(status=3, progress=101) is False
    assert len(server.job_history(job.id)) == 4  # refused updates are not recorded
    # a PUT replaces the job: what it leaves out is reset, and project/software are mandatory
    put = cytomine_client._put(f"job/{job.id}.json", json.dumps({"project": s.project, "software": sid}))
    assert put.status_code == 200 and (put.json()["job"]["status"], put.json()["job"]["progress"]) == (0, 0)
    assert cytomine_client._put(f"job/{job.id}.json", json.dumps({"status": 3})).status_code == 400
    assert server.job(job.id)["status_comment"] is None
    job.update(status=3, progress=100, statusComment="Finished.")

    cytomine_client.set_credentials(server.public_key, server.private_key)
    assert ids(AnnotationCollection(image=s.image).fetch()) == set()  # job layers are not listed by default
    listed = AnnotationCollection(image=s.image, user=job.userJob, showTerm=True).fetch()
    assert ids(listed) == {a["id"] for a in algo}
    assert listed[0].cropURL.startswith(f"{server.url}/api/algoannotation/")
    assert Annotation().fetch(algo[0]["id"]).class_ == "be.cytomine.ontology.AlgoAnnotation"

    _, public, private = server.add_user("intruder")
    cytomine_client.set_credentials(public, private)
    assert Job().fetch(job.id).update(status=4) is False
    assert last(server, f"/api/job/{job.id}.json").status == 403
    assert server.job(job.id)["status"] == 3


def test_attached_files_and_properties(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    server = s.server
    legacy = server.profile.legacy
    # a job's files on the legacy core (the apps' model files), a project's elsewhere
    owner = Job().fetch(Job(s.project, server.add_software("cyseg-train")).save().id) if legacy else \
        Project().fetch(s.project)
    own_class = owner.class_
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(5000) + b"\r\n--boundary-like\r\n" + bytes(range(256)))
    uploaded = AttachedFile(owner, filename=str(model)).upload()
    assert uploaded and uploaded.id is not None
    assert uploaded.domainClassName == own_class and uploaded.domainIdent == owner.id
    rec = last(server, "/api/attachedfile.json")
    assert rec.query == {"domainClassName": own_class, "domainIdent": str(owner.id)}
    assert rec.content_type.startswith("multipart/form-data")
    assert rec.auth.startswith("with-path" if path_signed(server) else "no-path")  # signed with the boundary
    stored = server.attached_files(owner.id)
    assert len(stored) == 1 and stored[0]["data"] == model.read_bytes()
    assert stored[0]["filename"] == "model.pt"  # the client sends the full local path; the cores keep the name
    files = AttachedFileCollection(owner).fetch()
    assert len(files) == 1
    assert files[0].download(str(tmp_path / "back.pt"), override=True)
    assert (tmp_path / "back.pt").read_bytes() == model.read_bytes()
    # the other generation's class name is not this core's
    foreign = own_class.replace("be.cytomine.", "be.cytomine.domain.") if legacy else \
        own_class.replace("be.cytomine.domain.", "be.cytomine.")
    assert AttachedFile(owner, domainIdent=owner.id, filename=str(model), domainClassName=foreign).upload() is False
    missing = Project(id=987654, **{"class": Project().fetch(s.project).class_})
    assert AttachedFile(missing, filename=str(model)).upload() is False
    assert last(server, "/api/attachedfile.json").status == 404

    assert Property(owner, key="dice", value="0.91").save()
    assert Property(owner, key="dice", value="0.5").save() is False  # key already set
    assert {p.key: p.value for p in PropertyCollection(owner).fetch()} == {"dice": "0.91"}
    assert Property(owner).fetch(key="dice").value == "0.91"
    annotation = Annotation().fetch(server.add_annotation(s.image, RECT))
    assert Property(annotation, key="score", value=0.8).save()
    assert PropertyCollection(annotation).fetch()[0].value == "0.8"
    assert last(server, "property.json").path == f"/api/annotation/{annotation.id}/property.json"
    assert [(p["key"], p["domain_ident"]) for p in server.properties()] == [("dice", owner.id),
                                                                             ("score", annotation.id)]


@LEGACY_ONLY
def test_router_registration_and_launch_build_the_command(cytomine_seed: Seed):
    """What the router registers from a descriptor and the command the core builds for a job."""
    s = cytomine_seed
    server = s.server
    descriptor = {"name": "S", "container-image": {"image": "user/s_app", "type": "singularity"},
                  "command-line": "run.py CYTOMINE_HOST CYTOMINE_PUBLIC_KEY CYTOMINE_PRIVATE_KEY "
                                  "CYTOMINE_ID_PROJECT CYTOMINE_ID_SOFTWARE SIZE NOTE",
                  "inputs": [*[{"id": n, "type": t, "set-by-server": True, "value-key": "@ID",
                                "command-line-flag": "--@id"} for n, t in CONNECTION_PARAMETERS],
                             {"id": "size", "type": "Number", "default-value": 512, "value-key": "@ID",
                              "command-line-flag": "--@id"},
                             {"id": "note", "type": "String", "optional": True, "value-key": "@ID",
                              "command-line-flag": "--@id"}]}
    sid = server.register_software(descriptor, "1.2.3")
    software = server.sql("SELECT * FROM software WHERE id = ?", (sid,))[0]
    assert software["execute_command"].startswith("singularity run s_app-1.2.3.simg run.py CYTOMINE_HOST")
    assert software["pulling_command"] == "singularity pull --name s_app-1.2.3.simg docker://user/s_app:1.2.3"
    job, user, words = server.launch_job(s.project, sid, {"size": 256})
    keys = server.user(user)
    assert words == ["singularity", "run", "s_app-1.2.3.simg", "run.py", "--cytomine_host", server.url,
                     "--cytomine_public_key", keys["public_key"], "--cytomine_private_key", keys["private_key"],
                     "--cytomine_id_project", str(s.project), "--cytomine_id_software", str(sid), "--size", "256",
                     "NOTE"]  # an optional input without value keeps its placeholder
    assert server.job(job)["status"] == 1
    shown = {p["name"]: p["value"] for p in server.job_json(server.job(job))["jobParameters"]}
    assert shown["cytomine_private_key"] == "*********************" and shown["size"] == "256"


@NOT_LEGACY
def test_no_job_api(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    for uri in ("software.json", "job.json", "job/1.json", "jobparameter/1.json"):
        assert cytomine_client._get(uri, None).status_code == 404, uri
    assert cytomine_client._post("job.json", json.dumps({"project": s.project, "software": 1})).status_code == 404
    with pytest.raises(ValueError, match="no software/job API"):
        s.server.add_software("x")


# --------------------------------------------------------------------------- faults -------------
def test_http_error_faults_are_consumed_then_service_resumes(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    server = s.server
    injection = server.inject(r"/api/imageinstance/\d+\.json$", 500, times=2)
    assert ImageInstance().fetch(s.image) is False
    assert ImageInstance().fetch(s.image) is False
    assert ImageInstance().fetch(s.image).id == s.image
    assert injection.remaining == 0 and len(injection.hits) == 2
    assert [r.status for r in server.requests if r.path.endswith(f"/imageinstance/{s.image}.json")] == [500, 500, 200]
    assert [r.fault for r in server.requests if r.path.endswith(f"/imageinstance/{s.image}.json")] == ["500", "500",
                                                                                                       None]

    for status in (502, 503):
        server.inject("window-", status)
        image = ImageInstance().fetch(s.image)
        assert image.window(0, 0, 10, 10, dest_pattern=str(tmp_path / f"{status}.png")) is False
        assert last(server, "window-").status == status
        assert image.window(0, 0, 10, 10, dest_pattern=str(tmp_path / f"{status}.png")) is True

    server.inject("annotation.json", 503, method="POST")
    assert AnnotationCollection(image=s.image).fetch() is not False  # GET not matched
    with pytest.raises(CollectionPartialUploadException):
        coll = AnnotationCollection()
        coll.append(Annotation(location=RECT, id_image=s.image))
        coll.save(n_workers=1)
    assert not server.faults.pending()
    with pytest.raises(ValueError):
        server.inject(".*", "explode")


def test_drop_truncate_and_timeout_faults(cytomine_seed: Seed, cytomine_client, tmp_path):
    s = cytomine_seed
    server = s.server
    server.inject(r"/api/imageinstance/\d+\.json", "drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        ImageInstance().fetch(s.image)
    assert last(server, "/api/imageinstance/").status is None

    server.inject(r"/api/imageinstance/\d+\.json", "truncate")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        ImageInstance().fetch(s.image)
    assert last(server, "/api/imageinstance/").fault == "truncate"

    image = ImageInstance().fetch(s.image)
    dest = tmp_path / "cut.png"
    server.inject("window-", "truncate")
    with pytest.raises(urllib3.exceptions.ProtocolError):  # raw stream read: not wrapped by requests
        image.window(0, 0, 400, 400, dest_pattern=str(dest))
    assert dest.exists() and dest.stat().st_size > 0  # the client leaves a partial file behind

    set_timeout(cytomine_client, 0.5)
    server.inject(r"/api/project/\d+\.json", "timeout", delay=2.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        Project().fetch(s.project)
    assert Project().fetch(s.project).id == s.project
    set_timeout(cytomine_client, None)


def test_faults_are_thread_safe(cytomine_seed: Seed, cytomine_client):
    s = cytomine_seed
    server = s.server
    server.inject(r"/api/project/\d+\.json", 503, times=7)
    results: list = []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            ok = Project().fetch(s.project)
            with lock:
                results.append(ok is not False)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(False) == 7 and results.count(True) == 13
    assert sum(r.status == 503 for r in server.requests) == 7
