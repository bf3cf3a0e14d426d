"""A local Cytomine server for tests: the REST API used by cytomine-python-client (4.x, and the
2.x/3.x signature variant), backed by SQLite and real slide files read with OpenSlide, with fault
injection. See docs/cytomine-test-server.md.

    from cytomine_server import CytomineTestServer       # tests/ is on sys.path under pytest
    with CytomineTestServer() as server:
        project = server.add_project("p")
        image = server.add_image(project, "slide.svs")
        ...  # Cytomine(server.url, server.public_key, server.private_key)
"""
from .auth import authorization_header, signature
from .faults import DROP, TIMEOUT, TRUNCATE, Injection
from .sample import ihc_rgb, write_png, write_pyramidal_tiff
from .server import CONNECTION_PARAMETERS, CytomineTestServer, RequestRecord

__all__ = ["CONNECTION_PARAMETERS", "DROP", "TIMEOUT", "TRUNCATE", "CytomineTestServer", "Injection", "RequestRecord",
           "authorization_header", "ihc_rgb", "signature", "write_png", "write_pyramidal_tiff"]
