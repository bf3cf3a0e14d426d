"""Host work beside the network when a command walks a folder: the next image is decoded and the
previous image's outputs (PNG, polygons, GeoJSON) are written in background threads while the
current image is inferred. On a GPU the network then waits for neither; on a CPU whose cores the
forward pass already keeps busy, the threads only take turns with it."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

Item = TypeVar("Item")
Value = TypeVar("Value")


def read_ahead(items: Sequence[Item], read: Callable[[Item], Value]) -> Iterator[tuple[Item, Value]]:
    """(item, read(item)) in order, the next item read in a background thread while the caller
    works on this one; an error of `read` is raised when its item's turn comes, as a plain loop would."""
    if not items:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="cyseg-read") as pool:
        upcoming = pool.submit(read, items[0])
        for i, item in enumerate(items):
            value = upcoming.result()
            if i + 1 < len(items):
                upcoming = pool.submit(read, items[i + 1])
            yield item, value


class BackgroundWriter:
    """Runs output jobs in one background thread, in order, at most `pending` queued (each holds an
    image's mask and probabilities, so memory stays bounded when writing is slower than inferring).
    A job's error is raised in the caller at the next `submit` or when the block ends; leaving the
    block on an error drops the queued jobs and waits for the running one, so nothing writes into
    an output folder that is being removed."""

    def __init__(self, pending: int = 2) -> None:
        if pending < 1:
            raise ValueError("pending must be >= 1")
        self._pending = pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cyseg-write")
        self._jobs: deque[Future[Any]] = deque()

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Queue `job(*args)`, first waiting for the oldest job when `pending` are queued."""
        while self._jobs and (self._jobs[0].done() or len(self._jobs) >= self._pending):
            self._jobs.popleft().result()
        self._jobs.append(self._pool.submit(job, *args))

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None:
                while self._jobs:
                    self._jobs.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
