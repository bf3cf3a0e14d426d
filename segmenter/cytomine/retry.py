"""The one retry policy of every Cytomine request, in two layers so that nothing is retried twice:

* the transport (the session's HTTP adapter, built by `RetryPolicy.adapter`) retries GETs on
  connection errors, read timeouts and TRANSPORT_STATUSES; when it gives up, the caller stops too;
* the connection (`segmenter.cytomine.connection`) tries each request up to `attempts` times for
  what the transport does not retry: other 5xx and 408 answers, bodies cut short, image bytes
  that do not decode, and 429/502/503/504 answers to PUTs (the adapter only retries GETs).

Both wait exponentially longer between tries, from BACKOFF seconds doubling up to MAX_DELAY.
POSTs are never retried (a POST whose answer was lost may have created its annotations); the
uploader checks the server and re-sends only what is missing, with the same delays.
"""
from __future__ import annotations

import http.client
from dataclasses import dataclass

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from segmenter.errors import CysegError

BACKOFF = 0.5  # seconds before the first retry; doubled at each further retry
MAX_DELAY = 16.0  # longest wait between two tries
TRANSPORT_STATUSES = frozenset({429, 502, 503, 504})  # retried by the adapter (GETs only)
TRANSPORT_METHODS = frozenset({"GET", "HEAD"})  # idempotent reads the adapter may repeat
OWN_STATUSES = frozenset({408})  # 4xx answers worth another try (besides 429)
#: Exceptions of a request that reached no definitive answer (retriable unless the adapter gave up).
REQUEST_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a Cytomine request is tried: `attempts` by the connection, each of which the
    transport retries `transport_retries` times more for its own failures (see the module)."""

    attempts: int = 4
    transport_retries: int = 4

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.transport_retries < 0:
            raise CysegError(f"Cytomine retries must be 0 or more (got {self.attempts - 1} and "
                             f"{self.transport_retries})")

    @classmethod
    def with_retries(cls, retries: int) -> RetryPolicy:
        """`retries` more tries after the first, at both layers (cydata's --retries)."""
        return cls(attempts=retries + 1, transport_retries=retries)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        return min(MAX_DELAY, BACKOFF * 2 ** retry)

    def adapter(self) -> HTTPAdapter:
        """The transport layer: GET/HEAD retried on connection errors, read timeouts and
        TRANSPORT_STATUSES with exponential back-off; writes are left to the callers."""
        n = self.transport_retries
        return HTTPAdapter(max_retries=Retry(total=n, connect=n, read=n, status=n, backoff_factor=BACKOFF,
                                             backoff_max=MAX_DELAY, status_forcelist=sorted(TRANSPORT_STATUSES),
                                             allowed_methods=TRANSPORT_METHODS, raise_on_status=False))

    def transport_gave_up(self, method: str, status: int | None = None, error: BaseException | None = None) -> bool:
        """True when the transport already retried this answer or exception as often as it may."""
        if error is not None:
            return _max_retry_error(error)
        return self.transport_retries > 0 and method in TRANSPORT_METHODS and status in TRANSPORT_STATUSES

    @staticmethod
    def retriable(status: int) -> bool:
        """Whether another try may get a different answer (server errors, timeouts, overload)."""
        return status >= 500 or status == 429 or status in OWN_STATUSES


def _max_retry_error(exc: BaseException) -> bool:
    """`requests` wraps urllib3's MaxRetryError, raised once the adapter's retries ran out."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return True
    return any(isinstance(arg, urllib3.exceptions.MaxRetryError) for arg in getattr(exc, "args", ()))


def describe(exc: BaseException) -> str:
    """A few words for a request exception (its type name included, never its URL)."""
    name = type(exc).__name__
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return f"timed out ({name})"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"answer cut short ({name})"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.ProtocolError, http.client.HTTPException)):
        return f"connection dropped ({name})"
    return name
