"""bench/active.py records made by hand for tests: one seed's rounds, and a data set's entry."""
from __future__ import annotations


def seed_record(full: float, **curves: list[float]) -> dict:
    """One seed of bench/active.py's per-seed record: its full-data model scored `full` and each strategy
    the IoU of its curve per round, 10 % more of the pool labelled each."""
    return {"full": {"iou": full}, **{name: [{"round": r + 1, "fraction": 0.1 * (r + 1), "iou": iou}
                                            for r, iou in enumerate(ious)] for name, ious in curves.items()}}


def with_unlabelled(record: dict, scores: dict[str, float], images: int, index: int = 1) -> dict:
    """`record` (one seed's) with each strategy's IoU on `images` pool images no strategy had labelled, as
    `--score-unlabelled` adds them, in its round entry `index` (round 2 by default)."""
    for name, iou in scores.items():
        record[name][index] |= {"unlabelled_iou": iou, "unlabelled_images": images}
    return record


def dataset_entry(per_seed: list[dict]) -> dict:
    """A data set's record from its seeds' records: the per-seed rounds and their summary over every strategy."""
    from bench.active import summarise

    return {"per_seed": per_seed, "summary": summarise(per_seed, [k for k in per_seed[0] if k != "full"])}


def one_seed_entry(curves: dict[str, list[float]], full: float) -> dict:
    """A data set's record from one seed whose strategies scored `curves` and whose full-data model scored
    `full`."""
    return dataset_entry([seed_record(full, **curves)])
