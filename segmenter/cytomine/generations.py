"""The three generations of Cytomine cores and what differs between them for cyseg
(reference: /work/shared/reference/cytomine-cores.md, written from the cores' sources):

* legacy -- the Grails core (Cytomine v1.x-v3.x): verifies path-signed requests, has the
  software/job API, its windows honour `zoom`, thumbnails live under the abstract image;
* spring -- the Spring Boot core (Community Edition 2023-2025): verifies path-signed requests, no
  job API, windows ignore `zoom`/`maxSize` (downscaled regions come from the crop endpoint),
  image-instance thumbnails need a browser token from 5.2 (the reference slice's do not);
* current -- the monorepo core after its signature change of 2025-12-18: verifies requests signed
  without the path, otherwise as spring, with term listings paged 20 at a time.

How a connection finds its server's generation (`detect`): `/server/ping` answers an
`authenticated` field only on the Grails core; between the other two, the signature style that
`user/current.json` accepts decides.
"""
from __future__ import annotations

from collections.abc import Callable

from segmenter.errors import CysegError

LEGACY, SPRING, CURRENT = "legacy", "spring", "current"
GENERATIONS = (LEGACY, SPRING, CURRENT)
AUTO = "auto"
CHOICES = (*GENERATIONS, AUTO)

NAMES = {LEGACY: "a legacy (Grails) core", SPRING: "a Spring core (Community Edition 2023-2025)",
         CURRENT: "a current core (monorepo, 2025-12 on)"}
#: Features that exist on some generations only, and the words that name them in errors.
FEATURES = {"jobs": ((LEGACY,), "software/job API (`cyseg job` reports to it; the Spring and current cores run "
                                "algorithms as App Engine tasks instead)")}


def signs_path(generation: str) -> bool:
    """Whether that core verifies a signature over the request path and query."""
    return generation != CURRENT


def check_choice(api: str | None) -> str:
    """The --cytomine-api value, checked: legacy, spring, current or auto (None is auto)."""
    value = (api or AUTO).strip().lower()
    if value not in CHOICES:
        raise CysegError(f"Cytomine generation {api!r} (--cytomine-api, or \"api\" in the config file) is not one of "
                         f"{', '.join(CHOICES)}")
    return value


def require(generation: str, feature: str, host: str) -> None:
    """CysegError naming the server's generation when `feature` does not exist there."""
    where, words = FEATURES[feature]
    if generation not in where:
        raise CysegError(f"Cytomine at {host} is {NAMES[generation]} and has no {words}; this needs "
                         f"{' or '.join(NAMES[g] for g in where)}")


def detect(requested: str, ping: dict, keys_accepted: Callable[[bool], bool], host: str) -> str:
    """The generation to talk to. `ping` is the /server/ping answer; `keys_accepted(with_path)`
    says whether the keys' user is served with that signature style. CysegError (one line) when
    the keys are refused or the server is not the generation asked for."""
    grails = "authenticated" in ping
    if requested != AUTO:
        if grails != (requested == LEGACY):
            actual = NAMES[LEGACY] if grails else "a Spring or current core"
            raise CysegError(f"Cytomine at {host} answers /server/ping like {actual}, not like {NAMES[requested]}; "
                             "give the right --cytomine-api or leave it at auto")
        if not keys_accepted(signs_path(requested)):
            raise _refused(host, f" signed for {NAMES[requested]} (--cytomine-api {requested})", "or --cytomine-api")
        return requested
    if grails:
        if keys_accepted(True):
            return LEGACY
        raise _refused(host, "")
    if keys_accepted(True):
        return SPRING
    if keys_accepted(False):
        return CURRENT
    raise _refused(host, ", signed with or without the request path")


def _refused(host: str, how: str, also: str = "") -> CysegError:
    return CysegError(f"Cytomine at {host} refused the keys{how} (authentication failed); check "
                      f"CYTOMINE_PUBLIC_KEY and CYTOMINE_PRIVATE_KEY{' ' + also if also else ''}")
