"""pytest fixtures and client helpers for the Cytomine test server.

Use them from a test module (``tests/`` is on ``sys.path`` under pytest's default import mode):

    from cytomine_server.fixtures import cytomine_server, cytomine_seed, cytomine_client  # noqa: F401

or register the module once for the whole suite in the root ``tests/conftest.py``:

    pytest_plugins = ["cytomine_server.fixtures"]

Fixtures:
  * ``cytomine_profile`` -- the core generation, parametrized over ``legacy``, ``spring`` and
    ``current``: every test using the server runs once per generation. A test of a feature that
    exists on some generations only narrows it with
    ``@pytest.mark.parametrize("cytomine_profile", ["legacy"])``.
  * ``cytomine_server`` -- a fresh started :class:`CytomineTestServer` of that profile per test
    (own SQLite file); teardown fails the test if the server hit an internal error (``server.errors``).
  * ``cytomine_seed`` -- that server seeded with a project, its ontology, terms ``nucleus``,
    ``cluster``, ``roi`` and two images (a pyramidal TIFF and a PNG built from scikit-image data):
    a :class:`Seed`.
  * ``cytomine_client`` -- the real ``cytomine.Cytomine`` client connected to ``cytomine_server``
    as its admin user, signing as that core verifies; the process-wide client singleton is reset
    afterwards.
  * ``cytomine_sample_slide`` / ``cytomine_sample_png`` -- paths of the generated images (session).
  * ``cmu_small_region`` -- ``../shared/data/slides/CMU-1-Small-Region.svs`` or skip.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openslide
import pytest

from .profiles import NAMES
from .sample import write_png, write_pyramidal_tiff
from .server import CytomineTestServer

SHARED_SLIDES = Path(__file__).resolve().parents[3] / "shared" / "data" / "slides"
SAMPLE_MPP = 0.25


@dataclass
class Seed:
    """Ids (and file paths) of what :func:`seed` created."""

    server: CytomineTestServer
    project: int
    ontology: int
    terms: dict[str, int]
    image: int           # pyramidal TIFF (1000 x 700, 0.25 µm/px)
    image_path: Path
    png: int             # PNG (600 x 400, no resolution)
    png_path: Path
    extra: dict = field(default_factory=dict)


def slide_region(path: Path, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
    """RGB pixels of a slide region read directly with OpenSlide: the reference a served window is
    compared with."""
    slide = openslide.open_slide(str(path))
    try:
        return np.asarray(slide.read_region((x, y), level, (w, h)))[:, :, :3]
    finally:
        slide.close()


def seed(server: CytomineTestServer, slide_path: Path, png_path: Path) -> Seed:
    """Create the standard project, ontology, terms and images on ``server``."""
    ontology = server.add_ontology("cyseg ontology")
    project = server.add_project("cyseg-test", ontology=ontology)
    terms = {name: server.add_term(name, ontology, color=color)
             for name, color in (("nucleus", "#0000FF"), ("cluster", "#00FF00"), ("roi", "#FF0000"))}
    image = server.add_image(project, slide_path)
    png = server.add_image(project, png_path)
    return Seed(server, project, ontology, terms, image, Path(slide_path), png, Path(png_path))


def connect(server: CytomineTestServer, public_key: str | None = None, private_key: str | None = None,
            *, timeout: float | None = None, generation: str | None = None):
    """A real ``cytomine.Cytomine`` client for ``server`` (the default keys are the server's admin
    user) whose requests are signed as ``generation``'s core verifies (default: the server's own,
    through :func:`segmenter.cytomine.connection.cytomine_client`). The client is a process-wide
    singleton: this one becomes ``Cytomine.get_instance()``. It pings ``/server/ping`` (retrying up
    to 120 s while that fails) and then fetches ``/api/user/current.json``; with wrong keys the
    constructor does not raise, ``current_user`` is ``False``. ``timeout`` sets a default requests
    timeout (the client has none)."""
    from segmenter.cytomine.connection import cytomine_client

    client = cytomine_client(server.url, public_key or server.public_key, private_key or server.private_key,
                             generation or server.profile.name, verbose=logging.WARNING, configure_logging=False)
    if timeout is not None:
        set_timeout(client, timeout)
    return client


def set_timeout(client, seconds: float | None) -> None:
    """Give every request of ``client`` a default timeout (cytomine-python-client sets none, so a
    stalled server blocks it forever)."""
    session = client._session
    original = getattr(session, "_cytomine_test_original_request", session.request)
    session._cytomine_test_original_request = original
    if seconds is None:
        session.request = original
        return

    @functools.wraps(original)
    def request(method, url, **kwargs):
        kwargs.setdefault("timeout", seconds)
        return original(method, url, **kwargs)

    session.request = request


def disconnect(client=None) -> None:
    """Close ``client``'s session and forget the process-wide client singleton."""
    from cytomine import Cytomine

    if client is not None:
        client._session.close()
    Cytomine._Cytomine__instance = None  # the singleton slot (name-mangled private attribute)


@pytest.fixture(scope="session")
def cytomine_sample_slide(tmp_path_factory) -> Path:
    """A 1000 x 700 three-level pyramidal tiled TIFF (OpenSlide generic-tiff), 0.25 µm/px."""
    return write_pyramidal_tiff(tmp_path_factory.mktemp("cytomine-sample") / "ihc-pyramid.tiff", mpp=SAMPLE_MPP)


@pytest.fixture(scope="session")
def cytomine_sample_png(tmp_path_factory) -> Path:
    """A 600 x 400 RGB PNG (read through OpenSlide's ImageSlide)."""
    return write_png(tmp_path_factory.mktemp("cytomine-sample") / "ihc.png")


@pytest.fixture(scope="session")
def cmu_small_region() -> Path:
    path = SHARED_SLIDES / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} not present (../shared/data is not part of a fresh clone)")
    return path


@pytest.fixture(params=NAMES)
def cytomine_profile(request) -> str:
    """The core generation the server stands in for (legacy, spring, current)."""
    return request.param


@pytest.fixture
def cytomine_server(tmp_path, cytomine_profile) -> Iterator[CytomineTestServer]:
    with CytomineTestServer(tmp_path / "cytomine-server", profile=cytomine_profile) as server:
        yield server
        errors = list(server.errors)
    if errors:
        pytest.fail("Cytomine test server internal errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def cytomine_seed(cytomine_server, cytomine_sample_slide, cytomine_sample_png) -> Seed:
    return seed(cytomine_server, cytomine_sample_slide, cytomine_sample_png)


@pytest.fixture
def cytomine_client(cytomine_server):
    client = connect(cytomine_server)
    yield client
    disconnect(client)
