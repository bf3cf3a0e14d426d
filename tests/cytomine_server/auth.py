"""HMAC-SHA1 request signatures of the Cytomine "CYTOMINE <public>:<signature>" scheme.

Each core verifies exactly one token variant (see docs/cytomine-test-server.md):

* with path -- the Grails core (``APIAuthentificationFilters`` + ``SecurityUtils.generateKeys``),
  the Spring core (``ApiKeyFilter``) and the monorepo core before 2025-12-18:
  ``METHOD\\n<content-MD5>\\n<content-type>\\n<date>\\n<request URI>[?<raw query string>]``
* without path -- the monorepo core from 2025-12-18 (``ApiKeyFilter.generateKeys``):
  ``METHOD\\n<content-MD5>\\n<content-type>\\n<date>``

The Spring and monorepo cores check a failed signature again with an empty content type; the
Grails core does not. The ``Date`` header must be present but is not compared with the clock
(no core does it).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_AUTH_RE = re.compile(r"^CYTOMINE\s+([^:\s]+):(\S+)$")


def signature(private_key: str, method: str, content_type: str, date: str,
              path_query: str | None = None, content_md5: str = "") -> str:
    """Base64 HMAC-SHA1 of the token; ``path_query=None`` gives the 4.x (no-path) variant."""
    token = f"{method}\n{content_md5}\n{content_type}\n{date}"
    if path_query is not None:
        token += f"\n{path_query}"
    digest = hmac.new(private_key.encode("utf-8"), token.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def authorization_header(public_key: str, private_key: str, method: str, content_type: str, date: str,
                         path_query: str | None = None) -> str:
    """The ``authorization`` header value a client would send."""
    return f"CYTOMINE {public_key}:{signature(private_key, method, content_type, date, path_query)}"


@dataclass(frozen=True)
class AuthResult:
    """Outcome of checking one request: ``user`` is the stored user row when accepted."""

    user: Mapping | None
    variant: str | None  # "no-path", "with-path", "no-path/empty-ct", "with-path/empty-ct"
    error: str | None     # why it was refused (None when accepted)
    unknown_key: bool = False  # no enabled user has this public key


def verify(method: str, path_query: str, headers: Mapping[str, str], lookup: Callable[[str], Mapping | None], *,
           with_path: bool, empty_type_retry: bool) -> AuthResult:
    """Check the ``authorization`` header of a request as one core does.

    ``path_query`` is the raw request target as received (path plus ``?query`` if any);
    ``lookup(public_key)`` returns the user row (with a ``private_key`` entry) or None;
    ``with_path`` picks the token variant, ``empty_type_retry`` the second try without content type.
    """
    auth = headers.get("authorization")
    if not auth:
        return AuthResult(None, None, "missing authorization header")
    if headers.get("date") is None:
        return AuthResult(None, None, "missing date header")
    m = _AUTH_RE.match(auth.strip())
    if not m:
        return AuthResult(None, None, "malformed authorization header (expected 'CYTOMINE <public>:<signature>')")
    public, sig = m.groups()
    user = lookup(public)
    if user is None:
        return AuthResult(None, None, f"User cannot be extracted with accessKey {public}", unknown_key=True)
    date = headers.get("date", "")
    md5 = headers.get("content-md5", "")
    ctype = headers.get("content-type", "")
    name = "with-path" if with_path else "no-path"
    resource = path_query if with_path else None
    candidates = [(name, ctype)]
    if ctype and empty_type_retry:
        candidates.append((f"{name}/empty-ct", ""))
    for variant, ct in candidates:
        expected = signature(user["private_key"], method, ct, date, resource, md5)
        if hmac.compare_digest(expected, sig):
            return AuthResult(user, variant, None)
    return AuthResult(None, None, "bad signature")
