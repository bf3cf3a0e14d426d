"""Thread-safe fault injection: make the next n matching requests fail in a chosen way."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

#: Kinds other than an HTTP status code.
TIMEOUT, DROP, TRUNCATE = "timeout", "drop", "truncate"
KINDS = (TIMEOUT, DROP, TRUNCATE)


@dataclass
class Injection:
    """One armed fault. ``remaining`` counts down as matching requests consume it."""

    pattern: str
    kind: int | str
    remaining: int
    method: str | None = None
    delay: float | None = None
    hits: list[str] = field(default_factory=list)  # "METHOD path?query" of the requests it hit

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern)

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._regex.search(target) is not None


class FaultInjector:
    """Holds the armed injections; the first armed one matching a request is consumed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[Injection] = []

    def inject(self, pattern: str, kind: int | str, times: int = 1, *, method: str | None = None,
               delay: float | None = None) -> Injection:
        if isinstance(kind, bool) or not ((isinstance(kind, int) and 400 <= kind <= 599) or kind in KINDS):
            raise ValueError(f"fault kind must be an HTTP status 400-599 or one of {KINDS}, got {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        injection = Injection(pattern, kind, times, method, delay)
        with self._lock:
            self._armed.append(injection)
        return injection

    def take(self, method: str, target: str) -> Injection | None:
        """Consume one use of the first armed injection matching ``method target`` (path?query)."""
        with self._lock:
            for injection in self._armed:
                if injection.remaining > 0 and injection.matches(method, target):
                    injection.remaining -= 1
                    injection.hits.append(f"{method} {target}")
                    if injection.remaining == 0:
                        self._armed.remove(injection)
                    return injection
        return None

    def pending(self) -> list[Injection]:
        with self._lock:
            return list(self._armed)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()
