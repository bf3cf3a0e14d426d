"""segmenter.pipeline: reading ahead and writing behind keep a plain loop's order, errors and
bounded memory while really running beside the caller."""
from __future__ import annotations

import threading

import pytest

from segmenter.pipeline import BackgroundWriter, read_ahead

WAIT = 10  # seconds; only reached when the behaviour under test is broken


def test_read_ahead_yields_every_item_in_order():
    assert list(read_ahead(["a", "b", "c"], str.upper)) == [("a", "A"), ("b", "B"), ("c", "C")]
    assert list(read_ahead([], str.upper)) == []


def test_read_ahead_reads_the_next_item_while_the_caller_works():
    started = {k: threading.Event() for k in range(3)}

    def read(k: int) -> int:
        started[k].set()
        return k

    for k, value in read_ahead([0, 1, 2], read):
        assert value == k
        if k + 1 < 3:  # a plain loop would only start reading k + 1 after this body
            assert started[k + 1].wait(WAIT), f"item {k + 1} was not read while item {k} was being worked on"


def test_read_ahead_raises_a_read_error_at_its_item():
    def read(name: str) -> str:
        if name == "bad":
            raise ValueError(f"{name} cannot be decoded")
        return name

    seen = []
    with pytest.raises(ValueError, match="bad cannot be decoded"):
        for name, _ in read_ahead(["ok1", "bad", "ok2"], read):
            seen.append(name)
    assert seen == ["ok1"]


def test_writer_runs_jobs_in_order_beside_the_caller():
    done = []
    with BackgroundWriter() as writer:
        for k in range(5):
            writer.submit(done.append, k)
    assert done == [0, 1, 2, 3, 4]


def test_writer_keeps_at_most_pending_jobs_queued():
    release = threading.Event()
    finished = []

    def job(k: int) -> None:
        release.wait(WAIT)
        finished.append(k)

    with BackgroundWriter(pending=2) as writer:
        writer.submit(job, 0)
        writer.submit(job, 1)
        threading.Timer(0.05, release.set).start()
        writer.submit(job, 2)  # must wait for job 0: two are queued
        assert 0 in finished
    assert finished == [0, 1, 2]


def test_writer_raises_a_job_error_when_the_block_ends():
    def job() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as writer:
        writer.submit(job)


def test_writer_drops_queued_jobs_when_the_caller_fails():
    release, running = threading.Event(), threading.Event()
    ran = []

    def job(k: int) -> None:
        running.set()
        release.wait(WAIT)
        ran.append(k)

    with pytest.raises(RuntimeError, match="inference failed"), BackgroundWriter(pending=3) as writer:
        writer.submit(job, 0)
        writer.submit(job, 1)
        assert running.wait(WAIT)
        threading.Timer(0.05, release.set).start()
        raise RuntimeError("inference failed")
    assert ran == [0], "the running job finishes, the queued one never starts"


def test_writer_refuses_no_room():
    with pytest.raises(ValueError, match="pending"):
        BackgroundWriter(pending=0)
