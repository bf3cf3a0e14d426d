"""bench/active.py records made by hand for tests: one seed's rounds, and a data set's entry."""
from __future__ import annotations


def seed_record(full: float, **curves: list[float]) -> dict:
    """One seed of bench/active.py's per-seed record: its full-data model scored `full` and each strategy
    the IoU of its curve per round, 10 % more of the pool labelled each."""
    return {"full": {"iou": full}, **{name: [{"round": r + 1, "fraction": 0.1 * (r + 1), "iou": iou}
                                            for r, iou in enumerate(ious)] for name, ious in curves.items()}}


def dataset_entry(per_seed: list[dict]) -> dict:
    """A data set's record from its seeds' records: the per-seed rounds and their summary over every strategy."""
    from bench.active import summarise

    return {"per_seed": per_seed, "summary": summarise(per_seed, [k for k in per_seed[0] if k != "full"])}


def one_seed_entry(curves: dict[str, list[float]], full: float) -> dict:
    """A data set's record from one seed whose strategies scored `curves` and whose full-data model scored
    `full`."""
    return dataset_entry([seed_record(full, **curves)])
