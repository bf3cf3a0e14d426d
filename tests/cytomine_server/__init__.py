"""A local stand-in for each Cytomine core generation (legacy Grails, Spring, current monorepo):
the REST API used by cytomine-python-client as that core serves, accepts and refuses it, backed by
SQLite and real slide files read with OpenSlide, with fault injection. See
docs/cytomine-test-server.md.

    from cytomine_server import CytomineTestServer       # tests/ is on sys.path under pytest
    with CytomineTestServer(profile="spring") as server:
        project = server.add_project("p")
        image = server.add_image(project, "slide.svs")
        ...  # Cytomine(server.url, server.public_key, server.private_key)
"""
from .auth import authorization_header, signature
from .faults import DROP, TIMEOUT, TRUNCATE, Injection
from .jobs import CONNECTION_PARAMETERS
from .profiles import NAMES as PROFILES
from .profiles import Profile
from .sample import ihc_rgb, write_png, write_pyramidal_tiff
from .server import CytomineTestServer, RequestRecord

__all__ = [
           "CONNECTION_PARAMETERS",
           "DROP",
           "PROFILES",
           "TIMEOUT",
           "TRUNCATE",
           "CytomineTestServer",
           "Injection",
           "Profile",
           "RequestRecord",
           "authorization_header",
           "ihc_rgb",
           "signature",
           "write_png",
           "write_pyramidal_tiff",
]
