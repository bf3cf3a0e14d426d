"""What a failed Cytomine request raises. Messages name the object asked for (`what`, written by
the caller) and the server; they never hold a key, a signature or a URL with its parameters."""
from __future__ import annotations

import requests

from segmenter.errors import CysegError


class HttpStatusError(CysegError):
    """A definitive HTTP answer other than 200 (not retried): `status`, and the server's own
    short explanation in `detail`."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or f"HTTP {status}"


class NotFound(HttpStatusError):
    """HTTP 404: the project, image, term, user, annotation or job does not exist (or is hidden)."""


class AccessRefused(HttpStatusError):
    """HTTP 401/403: the keys were refused, or they may not see or change this object."""


class ServerFailure(CysegError):
    """No valid answer after the retries (server errors, timeouts, dropped or cut answers), or
    a request sent once whose outcome is unknown. `reason` is the last problem, in a few words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def server_message(response: requests.Response) -> str:
    """The short error text of a Cytomine answer (JSON `errors`/`message`), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    text = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, dict):
            text = errors.get("message")
        elif isinstance(errors, str):
            text = errors
        text = text or body.get("message")
    text = " ".join(str(text).split())[:160] if text else ""
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def status_error(response: requests.Response, what: str, host: str) -> HttpStatusError:
    """The typed error of a definitive non-200 answer to the request for `what`."""
    status = response.status_code
    detail = server_message(response)
    if status == 404:
        return NotFound(status, f"{what} not found on {host} (HTTP 404)", detail)
    if status in (401, 403):
        return AccessRefused(status, f"{what}: Cytomine at {host} refused access (HTTP {status}); check the keys "
                                     "and the project's permissions", detail)
    return HttpStatusError(status, f"{what}: Cytomine answered {detail}", detail)
