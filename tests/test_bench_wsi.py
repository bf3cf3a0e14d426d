"""bench/wsi.py's arithmetic: where a whole-slide run's time went, and the most skipping can give
when the network infers the floor (the cells and their context) alone."""
from __future__ import annotations

import pytest

from bench.wsi import FULL_SLIDE_MP, floor_bound


def _run(seconds: float, windows: float, inference: float) -> dict:
    return {"seconds": seconds, "summary": {"window_seconds": windows, "inference_seconds": inference,
                                            "object_seconds": windows - inference, "megapixels": 268.4}}


def test_the_floor_replaces_the_skipping_runs_reading_and_network_only():
    whole = {"whole_slide_skip": _run(42.0, 36.5, 28.0), "whole_slide_no_skip": _run(146.0, 140.0, 128.0)}
    bound = floor_bound(whole, {"floor_bare_seconds": 13.0}, in_process=True)
    assert bound["time_split"]["skip"] == {"inference_s": 28.0, "objects_s": 8.5, "rest_s": 5.5}
    assert bound["time_split"]["no_skip"]["rest_s"] == 6.0
    assert bound["inference_speedup"] == pytest.approx(128 / 28)
    assert bound["skip_speedup_at_floor"] == pytest.approx(146 / (42 - 28 + 13))
    assert bound["full_slide_minutes_at_floor"] == pytest.approx(FULL_SLIDE_MP / 268.4 * 27 / 60)


def test_windows_run_side_by_side_give_no_rest_and_no_bound():
    whole = {"whole_slide_skip": _run(20.0, 36.5, 28.0), "whole_slide_no_skip": _run(70.0, 140.0, 128.0)}
    bound = floor_bound(whole, {"floor_bare_seconds": 13.0}, in_process=False)
    assert bound == {"time_split": {"skip": {"inference_s": 28.0, "objects_s": 8.5, "rest_s": None},
                                    "no_skip": {"inference_s": 128.0, "objects_s": 12.0, "rest_s": None}}}
