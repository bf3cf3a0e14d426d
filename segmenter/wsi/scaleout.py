"""Running windows: in this process (default), on a Dask LocalCluster (`--workers N`), or on an
existing Dask cluster (`--scheduler tcp://host:port`). Each Dask worker loads the model and opens
the slide once, and an error in any window stops the run (never a silently empty window)."""
from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from segmenter.errors import CysegError

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.cache import WindowResult
    from segmenter.wsi.slide import SlideReader
    from segmenter.wsi.windows import Region, WindowTask, WsiOptions

log = logging.getLogger(__name__)
#: How a worker loads a model file: a module-level function (pickled by reference), such as
#: `unet.load_segmenter`, so that this layer never imports the architectures above it.
Loader = Callable[[str, "str | None"], "Segmenter"]


@functools.lru_cache(maxsize=2)
def worker_segmenter(load: Loader, model_path: str, model_digest: str, device: str | None,
                     threads: int) -> Segmenter:
    """The model, loaded once per worker process (the digest makes a changed file reload)."""
    import torch

    from segmenter.allocator import freeze_loaded_objects, keep_freed_memory

    keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)
    seg = load(model_path, device)
    freeze_loaded_objects()
    return seg


_OPEN_SLIDES: OrderedDict[str, SlideReader] = OrderedDict()
OPEN_SLIDES_KEPT = 4


def worker_slide(reader: SlideReader) -> SlideReader:
    """The slide as this worker process first received it, kept for its next windows: readers
    travel without file handles or keys and reopen on their first read, so reusing one saves
    reopening the file (or reconnecting to Cytomine) for every window."""
    key = f"{type(reader).__name__}:{reader.identity()}"
    kept = _OPEN_SLIDES.get(key)
    if kept is not None:
        _OPEN_SLIDES.move_to_end(key)
        return kept
    _OPEN_SLIDES[key] = reader
    while len(_OPEN_SLIDES) > OPEN_SLIDES_KEPT:
        _OPEN_SLIDES.popitem(last=False)[1].close()
    return reader


def remote_window(task: WindowTask, load: Loader, model_path: str, model_digest: str, device: str | None,
                  threads: int, reader: SlideReader, region: Region, opts: WsiOptions) -> WindowResult:
    """What a Dask worker runs for one window."""
    return run_window(worker_segmenter(load, model_path, model_digest, device, threads), worker_slide(reader),
                      region, task, opts)


def run_window(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask,
               opts: WsiOptions) -> WindowResult:
    """One window, then the heap's free pages back to the OS, so the process that ran it (this one
    or a Dask worker) stays bounded by one window's working set."""
    from segmenter.allocator import release_freed_memory
    from segmenter.wsi.engine import process_window

    try:
        return process_window(seg, reader, region, task, opts)
    finally:
        release_freed_memory()


class InProcess:
    """Windows one after the other, in this process, with the already loaded model."""

    def __init__(self, seg: Segmenter):
        self.seg = seg

    def run(self, tasks: list[WindowTask], reader: SlideReader, region: Region, opts: WsiOptions,
            model_path: str, model_digest: str) -> Iterator[WindowResult]:
        for task in tasks:
            yield run_window(self.seg, reader, region, task, opts)

    def close(self) -> None:
        """Nothing to release."""


class DaskRunner:
    """Windows spread over a Dask cluster: a LocalCluster of `workers` processes, or the cluster
    whose scheduler is at `scheduler`; each worker loads the model file with `load`."""

    def __init__(self, load: Loader, workers: int = 0, scheduler: str | None = None, device: str | None = None,
                 threads_per_worker: int | None = None):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise CysegError("Dask is not installed; pip install 'dask[distributed]' or run without "
                             "--workers/--scheduler") from exc
        self.load = load
        self.device = device
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise CysegError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check the address") from exc
            self.threads = threads_per_worker or 0
        else:
            if workers < 1:
                raise CysegError(f"--workers {workers} must be >= 1")
            self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.WARNING)
            self.client = Client(self.cluster)
        log.info("Dask cluster: %s", self.client.dashboard_link if self.cluster is None else f"{workers} local workers")

    def run(self, tasks: list[WindowTask], reader: SlideReader, region: Region, opts: WsiOptions,
            model_path: str, model_digest: str) -> Iterator[WindowResult]:
        from dask.distributed import as_completed

        futures = [self.client.submit(remote_window, task, self.load, model_path, model_digest, self.device,
                                      self.threads,
                                      reader, region, opts, pure=False) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        """Shut down the client (and the LocalCluster we started)."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_runner(seg: Segmenter, load: Loader, workers: int, scheduler: str | None,
                device: str | None) -> InProcess | DaskRunner:
    """The runner the options ask for (`load` is how Dask workers load the model file)."""
    if scheduler or workers > 0:
        return DaskRunner(load, workers=workers, scheduler=scheduler, device=device)
    return InProcess(seg)

