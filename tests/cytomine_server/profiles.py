"""One profile per real Cytomine core generation: what the stand-in accepts, refuses and answers.

* ``legacy`` -- the Grails core (v1.x-v3.x, IMS image server): path-signed requests only, a bad
  signature redirects to the login page, the software/job API, windows honour ``zoom``/``maxSize``
  and masks, annotation arrays answer 200/206/400, ``resolution``/``depth`` image fields, no slices,
  thumbnails only on ``abstractimage``.
* ``spring`` -- the Spring Boot core (CE 2023-CE 2025, ``version`` 4.x/5.x): path-signed with an
  empty-content-type retry, 401 with the HTML error page, no job API, windows ignore ``zoom``,
  ``maxSize`` and masks (full-resolution pixels, 400 past the border), annotation arrays answer 200
  with the status in the body, App Engine endpoints from 5.1, image-instance thumbnails need a
  Keycloak token from 5.2.
* ``current`` -- the monorepo core after its signature change of 2025-12-18: signed without the
  path, ``/server/ping.json`` gone, terms and projects served by its repository service (term
  listings paged Spring-style, 20 per page; a missing term or project answers the HTML error
  page), otherwise as ``spring`` 5.2.

docs/cytomine-test-server.md names the source file and commit each behaviour follows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

NAMES = ("legacy", "spring", "current")
SPRING_DEFAULT = "5.2.0"  # the newest Spring release: its thumbnails need a token


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass(frozen=True)
class Profile:
    """The behaviour switches of one core generation (see the module docstring)."""

    name: str
    version: str
    signs_path: bool  # the signed message ends with the request path and query
    empty_type_retry: bool  # a failed signature is checked again with an empty content type
    login_redirect: bool  # a bad signature is answered 302 to the login page (401 with `nopage: true`)
    jobs: bool  # software, job, job parameter routes
    slices: bool  # slice instances (reference slice, slice windows and thumbnails)
    tiles: bool  # normalized tiles
    app_engine: bool  # /api/app-engine/...
    window_options: bool  # windows honour zoom, maxSize and masks, and are clipped to the image
    status_in_body: bool  # annotation arrays: HTTP 200 with {"data", "status"}
    thumb_needs_token: bool  # imageinstance/abstractimage thumbnails need ?authorization=Bearer
    repository: bool  # monorepo repository service: terms paged page/size (20), ontologyId; 404 = error page
    ping_json: bool  # /server/ping.json exists
    html_errors: bool  # 401 and unknown routes answer the core's HTML error page

    @property
    def legacy(self) -> bool:
        return self.name == "legacy"

    def at_least(self, version: str) -> bool:
        return _version_tuple(self.version) >= _version_tuple(version)

    def class_name(self, spring_name: str) -> str:
        """The domain class name this core writes (Grails: no `.domain.` package level)."""
        return spring_name.replace("be.cytomine.domain.", "be.cytomine.") if self.legacy else spring_name


def profile(name: str, version: str | None = None) -> Profile:
    """The profile of a core generation; `version` picks a Spring release (default 5.2.0)."""
    if name == "legacy":
        return Profile("legacy", version or "3.0.4", signs_path=True, empty_type_retry=False, login_redirect=True,
                       jobs=True, slices=False, tiles=False, app_engine=False, window_options=True,
                       status_in_body=False, thumb_needs_token=False, repository=False,
                       ping_json=True, html_errors=False)
    if name == "spring":
        version = version or SPRING_DEFAULT
        spring = Profile("spring", version, signs_path=True, empty_type_retry=True, login_redirect=False, jobs=False,
                         slices=True, tiles=True, app_engine=False, window_options=False, status_in_body=True,
                         thumb_needs_token=False, repository=False, ping_json=True,
                         html_errors=True)
        return replace(spring, tiles=spring.at_least("5.0.0"), app_engine=spring.at_least("5.1.0"),
                        thumb_needs_token=spring.at_least("5.2.0"))
    if name == "current":
        return Profile("current", version or "2026.1", signs_path=False, empty_type_retry=True, login_redirect=False,
                       jobs=False, slices=True, tiles=True, app_engine=True, window_options=False,
                       status_in_body=True, thumb_needs_token=True, repository=True,
                       ping_json=False, html_errors=True)
    raise ValueError(f"unknown Cytomine profile {name!r}; choose one of {', '.join(NAMES)}")

