"""The documentation a user reads: the README stays short, its figures come from benchmark JSON
through bench/report.py, the generated files are up to date, and the code map is complete."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from active_records import dataset_entry, one_seed_entry, seed_record, with_unlabelled

from bench import report

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
NUMBER = re.compile(r"\d+(?:\.\d+)?")
NOT_PACKAGES = {".venv", "build", "dist", ".git"}


def block(name: str) -> str:
    """The README's generated block `name`."""
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert match, f"README.md lacks its generated {name} block"
    return match.group(1)


def section(title: str) -> str:
    """The README's `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README.md lacks a '## {title}' section"
    return match.group(1)


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar of a parsed JSON document."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def json_figures() -> tuple[list[float], set[str]]:
    """The numbers of every results file, and the numbers written inside their strings."""
    numbers: list[float] = []
    in_strings: set[str] = set()
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        for leaf in leaves(json.loads(path.read_text())):
            if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
                numbers.append(abs(float(leaf)))
            elif isinstance(leaf, str):
                in_strings.update(NUMBER.findall(leaf))
    return numbers, in_strings


def backed(token: str, numbers: list[float], in_strings: set[str]) -> bool:
    """A figure as written (its decimals) is a JSON number, or one as a percentage, or a number
    written in a JSON string."""
    decimals = len(token.partition(".")[2])
    return token in in_strings or any(f"{v * scale:.{decimals}f}" == token for v in numbers for scale in (1, 100))


def test_generated_docs_are_up_to_date():
    assert report.stale(report.outputs()) == [], "run python bench/report.py"


def test_readme_is_at_most_200_lines():
    assert len(README.splitlines()) <= 200


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    fence = re.search(r"```bash\n(.*?)```", README, re.S)
    assert fence and README.index(fence.group(0)) < README.index("\n## ")
    demo, tests = fence.group(1).splitlines()
    assert demo.endswith("cyseg demo --out demo_out") and tests.endswith(".venv/bin/python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"torch==[\d.]+", tests).group(0) in ci and ".venv/bin/python -m pytest -q" in ci


@pytest.mark.parametrize("name", ["results", "shipped-model"])
def test_every_figure_of_a_generated_block_is_in_a_json(name):
    numbers, in_strings = json_figures()
    unbacked = [t for t in NUMBER.findall(block(name)) if not backed(t, numbers, in_strings)]
    assert unbacked == []


def test_code_map_names_every_package():
    code_map = section("Code map")
    packages = {p.parent.relative_to(REPO).as_posix() for p in REPO.rglob("__init__.py")
                if not NOT_PACKAGES & set(p.relative_to(REPO).parts) and ".egg-info" not in str(p)}
    missing = [f"{name}/" for name in sorted(packages | {"tests", "bench", "docs"}) if f"`{name}/`" not in code_map]
    assert missing == []


def test_shipped_model_docs_follow_the_current_protocol():
    """The shipped model's section and README line, from a results file of bench/default_model.py's
    current protocol (cells and nuclei, recipe chosen on validation by its merit, test scored once)."""
    scores = {"n_images": 5, "threshold": 0.4, "dice": 0.9, "object_f1": 0.8, "aji": 0.7, "pq": 0.6}
    data = {"protocol": "a protocol", "chosen": "zoom0.8", "installed": True, "run": {"cpu_threads": 1},
            "split": {"wbc": {"fit": 192, "val": 48, "test": 60}, "miccai15": {"fit": 8, "val": 2, "test": 5}},
            "candidates": {label: {"train_args": args, "train_cpu_s": 600.0, "best_epoch": 31,
                                   "val": {"wbc": {"cell": scores, "nucleus": scores}}, "val_merit": 0.85}
                           for label, args in {"zoom0.4": "--instances --zoom 0.4",
                                               "zoom0.8": "--instances --zoom 0.8"}.items()},
            "test": {"wbc": {"cell": scores, "nucleus": scores}, "miccai15": {"nucleus": scores}}}
    section_text = "\n".join(report.default_model_section(data))
    assert "`zoom0.8` (chosen)" in section_text
    assert "| wbc | cell | 192 | 48 | 5 | 0.4 | 0.900 | 0.800 |" in section_text
    line = report.shipped_model_block(data)[0]
    assert line.startswith("The shipped model was trained with `cyseg train --instances --zoom 0.8` on 192 wbc, 8")
    assert "for nuclei, wbc 0.900, miccai15 0.900; for whole cells, wbc 0.900" in line
    assert report.default_model_section({"held_out_scores": {}})[-2].startswith("Not measured yet")
    assert "continued (`--resume`)" not in section_text
    data["resumed"] = {"interrupted_run": {"code": {"commit": "f15257f00"}, "started": "2026-12-06T17:00:00+00:00",
                                           "cpu": {"model": "AMD EPYC"}},
                       "trainings": {"zoom0.8": {"kept": True, "epochs": 120, "wall_s": 3000.0}}}
    resumed_text = "\n".join(report.default_model_section(data))
    assert ("This run continued (`--resume`) a run interrupted at `f15257f` (started 2026-12-06T17:00:00+00:00, "
            "AMD EPYC): `zoom0.8` kept (120 epochs, 50 min wall before).") in resumed_text


def test_instance_docs_name_each_recipe_and_the_runs_of_the_earlier_protocol():
    """Each data set's row names the recipe its validation images chose; entries of the one-recipe
    protocol (no least object area chosen) are named as such."""
    scores = {"n_images": 5, "threshold": 0.5, "dice": 0.9, "object_f1": 0.8, "aji": 0.7, "pq": 0.6,
              "object_dice": 0.85, "object_hausdorff": 12.0}
    entry = {"split": {"fit": 68, "val": 17, "test": 80}, "test": {"foreground": scores}, "train_cpu_s": 600.0,
             "run": {"cpu_threads": 2, "cpu_s": 700.0}}
    data = {"glas": {**entry, "chosen": "colour-zoom", "candidates": {"defaults": {}, "colour-zoom": {}},
                     "glas": {"object_f1": 0.8, "object_dice": 0.85, "object_hausdorff": 12.0,
                              "published_weighted_60_20": {"DCAN": {"object_f1": 0.863, "object_dice": 0.868}}}},
            "miccai15": entry}
    text = "\n".join(report.instances_section(data))
    assert "| glas | foreground | 68 / 17 / 80 | colour-zoom (of 2) | 0.900 | 0.800 |" in text
    assert "| miccai15 | foreground | 68 / 17 / 80 | defaults | 0.900 |" in text
    assert "earlier protocol (one recipe, no least object area chosen, specks scored as objects): miccai15 (" in text


def test_the_recipe_choice_line_says_kept_for_the_incumbent_and_chosen_for_a_challenger():
    """A challenger that passed the rule is "chosen", an incumbent that stayed is "kept"; a recipe
    weighed with test-time augmentation says so beside its merit."""
    def entry(chosen: str) -> dict[str, Any]:
        return {"chosen": chosen, "candidates": {"old": {"val_merit": 0.88}, "new": {"val_merit": 0.89}},
                "choice": {"incumbent": "old", "lead_in_se": 2.0,
                           "leads": {"new": {"lead": 0.014, "se": 0.006, "images": 17}}}}
    weighed_with_tta = entry("old")
    weighed_with_tta["candidates"]["new"]["tta"] = True
    lines = report.recipe_choice_lines({"a": entry("new"), "b": entry("old"), "c": weighed_with_tta})
    assert "`new` 0.8900, lead +0.0140 ± 0.0060 (17 images)" in lines[0] and lines[0].endswith("; chosen: `new`.")
    assert lines[2].endswith("; kept: `old`.")
    assert "`old` 0.8800 (incumbent); `new` 0.8900 with TTA, lead +0.0140" in lines[4]
    alone = {"chosen": "old", "candidates": {"old": {"val_merit": 0.88, "val_merit_per_seed": [0.87, 0.89]}},
             "choice": {"incumbent": "old", "lead_in_se": 2.0, "leads": {}}}
    assert report.recipe_choice_lines({"d": alone}) == [
        "Validation merit on d, averaged over 2 seeds: `old` 0.8800, the only recipe listed.", ""]


def test_a_run_that_scored_its_tta_view_without_calibrating_it_is_named():
    """Entries with a TTA view whose candidates record no TTA-chosen settings predate `cyseg calibrate`;
    entries without a TTA view, or with its settings, are not named."""
    data = {"old": {"tta": False, "candidates": {"a": {}}},
            "new": {"tta": True, "candidates": {"a": {"tta_settings": {}}}},
            "plain": {"tta": None, "candidates": {"a": {}}}}
    assert report.uncalibrated_tta_lines(data) == [
        "Measured before `cyseg calibrate`: old scored the TTA view with the thresholds and separation chosen without "
        "TTA.", ""]
    assert report.uncalibrated_tta_lines({"new": data["new"]}) == []


def test_a_resumed_run_names_the_interrupted_run_and_what_it_took_over():
    """A run that continued an interrupted one says from which code, and which trainings it kept or
    continued, with what ran before; a run that did not resume says nothing."""
    resumed = {"interrupted_run": {"code": {"commit": "1a386866f93c"}, "started": "2026-12-06T11:45:35+00:00",
                                   "cpu": {"model": "AMD EPYC"}},
               "trainings": {"old": {"kept": True, "epochs": 120, "wall_s": 2076.0},
                             "new": {"kept": False, "epochs": 12, "wall_s": 600.0}}}
    lines = report.resumed_lines({"a": {"resumed": resumed}, "b": {}})
    assert lines == ["The a run continued (`--resume`) a run interrupted at `1a38686` (started "
                     "2026-12-06T11:45:35+00:00, AMD EPYC): `old` kept (120 epochs, 35 min wall before); `new` "
                     "continued (12 epochs, 10 min wall before). Every evaluation, the choice and the test ran in the "
                     "resumed run; its training column counts the resumed run's CPU only.", ""]
    active = report.resumed_lines({"wbc": {"resumed": resumed}}, report.RERAN_ACTIVE)
    assert active[0].startswith("The wbc run continued") and active[0].endswith(
        "10 min wall before). Every suggestion and score ran in the resumed run.")
    resumed["interrupted_run"]["noted_by_hand"] = "its refit was made by a later resumed run"
    (line, _) = report.resumed_lines({"a": {"resumed": resumed}})
    assert line.endswith("CPU only. Noted by hand in the record: its refit was made by a later resumed run.")


def test_the_choice_of_the_uncertainty_weight_is_tabled_from_validation():
    """The validation comparison names every strategy per round and the weight it chose."""
    curves = {"random": [0.5, 0.70, 0.71], "suggest_w0": [0.5, 0.72, 0.73], "suggest_w1": [0.5, 0.69, 0.74]}
    data = {"settings": {"datasets": "glas", "holdout": 0.2, "weights": [0.0, 1.0], "seeds": 1, "rounds": 3,
                         "epochs": 12, "crop": 128, "jobs": 3}, "run": {"cpu_threads": 1},
            "datasets": {"glas": one_seed_entry(curves, 0.75)}}
    text = "\n".join(report.active_validation_section(data))
    assert "| glas | 2 | 20 % | 0.700 ± 0.000 | 0.720 ± 0.000 | 0.690 ± 0.000 |" in text
    assert "best by validation IoU suggest_w0" in text and "suggest_w0 yes, suggest_w1 no" in text
    assert ("- suggest_w1 − random, paired by seed: round 2 -0.010 (0 of 1 seeds ahead); round 3 +0.030 (1 of 1 "
            "seeds ahead)") in text
    assert "--jobs 3 --holdout 0.2 --weights 0,1 --out bench/results/active_validation.json" in text
    assert report.active_validation_section(None) == []
    data["settings"] |= {"epochs": 36}
    budget = "\n".join(report.active_validation_budget_section(data))
    assert "at 36 epochs per round: 20 % of the pool held out, 1 seeds, 3 rounds" in budget
    assert "| glas | 2 | 20 % | 0.700 ± 0.000 | 0.720 ± 0.000 | 0.690 ± 0.000 |" in budget
    assert "--holdout-by" not in budget
    data["settings"] |= {"holdout_by": "appearance"}
    look = "\n".join(report.active_validation_appearance_section(data))
    assert "held-out 20 % chosen by look instead of at random" in look and "1 seeds, 3 rounds" in look
    assert ("--holdout 0.2 --holdout-by appearance --weights 0,1 --out bench/results/active_validation_appearance.json"
            in look)
    assert "| glas | 2 | 20 % | 0.700 ± 0.000 | 0.720 ± 0.000 | 0.690 ± 0.000 |" in look


def test_the_reproduce_command_names_each_density_weight():
    """A strategy with a density weight is reproduced by its W:D entry; one without keeps its plain weight."""
    settings = {"datasets": "glas", "seeds": 3, "rounds": 2, "epochs": 36, "crop": 128, "jobs": 3,
                "weights": [1.0, 1.0], "density_weights": [0.0, 4.0], "score_unlabelled": True}
    assert "--weights 1,1:4 --score-unlabelled --out bench/results/d.json" in report.active_command(settings, "d.json")
    single = settings | {"weights": [1.0], "density_weights": [2.0]}
    assert "--weights 1:2 " in report.active_command(single, "d.json")
    plain = {k: v for k, v in settings.items() if k != "density_weights"} | {"weights": [1.0]}
    assert "--weights" not in report.active_command(plain, "d.json")


def test_the_reproduce_command_names_the_replicates_only_when_several():
    """A run with several trainings per labelled set is reproduced with --replicates; one without (or an older
    record without the setting) is not."""
    settings = {"datasets": "glas", "seeds": 3, "rounds": 3, "epochs": 36, "crop": 128, "jobs": 2, "weights": [1.0],
                "score_unlabelled": True, "replicates": 2}
    assert "--score-unlabelled --replicates 2 --out" in report.active_command(settings, "r.json")
    assert "--replicates" not in report.active_command(settings | {"replicates": 1}, "r.json")
    assert "--replicates" not in report.active_command({k: v for k, v in settings.items() if k != "replicates"},
                                                       "r.json")


def test_the_larger_budget_run_is_tabled_beside_what_the_base_budget_reached():
    """The larger-budget section states its budget against the base run's, what the base budget's
    full-data model and last random round scored, and each round of its own run."""
    def run(epochs: int, curves: dict[str, list[float]], full: float) -> dict:
        return {"settings": {"datasets": "glas", "seeds": 3, "rounds": 3, "epochs": epochs, "steps_per_epoch": 20,
                             "crop": 128, "jobs": 3}, "run": {"cpu_threads": 1},
                "datasets": {"glas": one_seed_entry(curves, full)}}

    base = run(12, {"random": [0.6, 0.7, 0.73], "suggest": [0.6, 0.69, 0.72]}, 0.72)
    data = run(36, {"random": [0.6, 0.70, 0.74], "suggest": [0.6, 0.75, 0.78]}, 0.79)
    text = "\n".join(report.active_budget_section(data, base))
    assert "36 epochs of 20 steps per round (3× the budget above), 3 seeds" in text
    assert "- glas, budget above: full-data IoU 0.720; random labelling of 30 % of the pool 0.730." in text
    assert "| glas | 1 | 10 % | 0.600 ± 0.000 | 0.600 ± 0.000 | same model |" in text
    assert "| glas | 2 | 20 % | 0.700 ± 0.000 | 0.750 ± 0.000 | +0.050 (1 of 1 seeds ahead) |" in text
    assert "98 % of it: random did not by the last round, suggest reached it with 30 % of the pool labelled;" in text
    assert ("`python bench/active.py --datasets glas --seeds 3 --rounds 3 --epochs 36 --crop 128 --jobs 3 --out "
            "bench/results/active_budget.json`") in text
    assert report.active_budget_section(None) == []


def test_machine_line_names_the_thread_count_of_each_run():
    one = {"cpu_threads": 1}
    assert report.run_machine({"a": {"run": one}, "b": {"run": one}}) == "the CPU, no GPU, 1 thread"
    mixed = report.run_machine({"glas": {"run": one}, "wbc": {"run": {"cpu_threads": 2}},
                                "miccai15": {"run": {"cpu_threads": 2}}})
    assert mixed == "the CPU, no GPU, 1 thread: glas; 2 threads: wbc, miccai15"


def test_instances_rows_and_command_say_which_test_model_was_a_refit():
    scores = {"dice": 0.9, "object_f1": 0.8, "aji": 0.7, "pq": 0.6, "object_dice": 0.8, "object_hausdorff": 50.0}
    entry = {"split": {"fit": 68, "val": 17, "test": 80}, "chosen": "120-epochs", "tta": True,
             "test": {"foreground": scores}, "train_cpu_s": 60.0}
    data = {"glas": {**entry, "refit": {"images": "fit + val"}}, "wbc": entry}
    recipes = {row[0]: row[3] for row in report.instance_rows(data)}
    assert recipes == {"glas": "120-epochs, TTA, refit on fit + val", "wbc": "120-epochs, TTA"}
    assert report.refit_command(data) == " (`--datasets glas --refit` for glas)"
    assert report.refit_command({"wbc": entry}) == ""


def test_the_rebuild_section_says_whether_the_weights_came_back():
    run = {"cpu_threads": 1, "wall_s": 3600.0, "cpu": {"kernels": "AVX512"}}
    record = {"benchmark": "default_model_rebuild", "recipe": "r", "run": run, "identical": False,
              "weights_sha256": {"rebuilt": "ab" * 32, "shipped": report.shipped_weights()},
              "max_abs_weight_difference": 1e-3, "candidate": {"best_epoch": 9, "val_merit": 0.8},
              "recorded_best_epoch": 10, "recorded_val_merit": 0.81}
    text = "\n".join(report.rebuild_section(record))
    assert "differ from the shipped model's" in text and "best epoch 9 (recorded 10)" in text
    assert "equal the shipped model's bit for bit" in "\n".join(report.rebuild_section(record | {"identical": True}))
    assert report.rebuild_section({"benchmark": "default_model", "candidates": {}}) == []
    other = {"rebuilt": "cd" * 32, "shipped": "cd" * 32}  # a rebuild of earlier weights
    earlier = "\n".join(report.rebuild_section(record | {"weights_sha256": other, "identical": True}))
    assert "Not measured for the shipped weights yet" in earlier and "bit for bit" not in earlier


def test_the_readme_glas_row_names_the_training_images_and_dcan():
    glas = {"object_f1": 0.833, "object_dice": 0.847,
            "published_weighted_60_20": {"DCAN": {"object_f1": 0.863, "object_dice": 0.868}}}
    entry = {"chosen": "120-epochs", "glas": glas}
    (row,) = report.glas_results({"glas": entry | {"refit": {}}})
    assert "refit on fit + val" in row[1] and row[2] == "object F1 0.833, object Dice 0.847 (DCAN, 60/20-weighted: " \
                                                        "0.863 / 0.868)"
    assert "fit images" in report.glas_results({"glas": entry})[0][1]
    assert report.glas_results({"wbc": entry}) == [] and report.glas_results(None) == []


def test_a_recalibrated_shipped_model_says_what_was_chosen_again_and_the_scores_before():
    scores = {"wbc": {"cell": {"dice": 0.97, "object_f1": 0.99}}}
    run = {"code": {"commit": "abcdef0"}, "cpu_threads": 2, "cpu": {"kernels": "AVX512"}}
    again = {"protocol": "weights unchanged", "run": run, "before": {"val": scores, "test": scores},
             "separation": {"cell": {"h": 0.1, "grow": "nearest", "nucleus_seeds": True, "join": 2.0}},
             "min_area": {"cell": 528.3}, "val": scores, "val_merit": 0.98}
    record = {"chosen": "r", "candidates": {"r": {"val_merit": 0.9}}, "recalibration": again}
    text = "\n".join(report.recalibration_lines(record))
    assert "--recalibrate`, commit abcdef0" in text and "Validation merit 0.9000 → 0.9800" in text
    assert "Chosen: cell: h 0.1, nearest, nuclei joined across 2 diameters as seeds, objects from 528.3 px²" in text
    assert "before it: wbc cell 0.970/0.990" in text
    assert report.recalibration_lines({k: v for k, v in record.items() if k != "recalibration"}) == []


def test_an_instance_model_on_whole_slides_reads_as_its_separation_threads_and_objects():
    entry = {"mp_per_s": {"instances": 1.4, "regions": 1.5}, "peak_rss_mb": {"instances": 1346.0, "regions": 1332.0},
             "instances_vs_regions": 0.94, "cpu_threads": 1, "objects": {"instances": {"cell": 68, "nucleus": 1288},
                                                                         "regions": {"cell": 14, "nucleus": 1288}},
             "model": {"separation": {"cell": {"h": 0.3, "grow": "nearest", "nucleus_seeds": True, "join": 2.0},
                                      "nucleus": {"h": 0.4}}}}
    row = report.wsi_instances_row("default", entry)
    assert row[1] == "cell: h 0.3, nearest, nuclei joined across 2 diameters as seeds; nucleus: h 0.4, watershed"
    assert row[2] == "1" and row[4] == "94 %" and row[5] == "cell 68, nucleus 1288 / cell 14, nucleus 1288"


def test_a_recovered_share_of_a_loss_within_noise_is_marked():
    """A share of the IoU lost to the removal is marked † when that loss is under two standard errors of
    (a) − (b) over the seeds, and named as noise in the README row."""
    full = {"mean": 0.743, "std": 0.038, "n": 3}
    small_loss = {"mean": 0.732, "std": 0.034, "n": 3}
    real_loss = {"mean": 0.600, "std": 0.034, "n": 3}
    assert report.loss_within_noise(full, small_loss) and not report.loss_within_noise(full, real_loss)
    assert report.recovered_cell(1.21, {"iou": full}, {"iou": small_loss}, "iou") == "121 %†"
    assert report.recovered_cell(0.75, {"iou": full}, {"iou": real_loss}, "iou") == "75 %"
    assert report.recovered_cell(None, {}, {}, "val_iou") == "–"
    half = {"recovery": {"idi": 1.21}, "incomplete": {"iou": small_loss}}
    row = report.idi_results({"datasets": {"miccai15": {"full": {"iou": full}, "p": {"p0.5": half}}}})
    assert row[0][2] == "recovers miccai15 121 % of a loss within the seeds' noise"


def test_the_readme_row_takes_each_data_set_from_the_larger_budget_run_that_measured_it():
    """Where the base budget limits the full-data model, its 'reached' figure says little; the row uses the
    larger-budget run for the data sets that run measured, and says which budget each figure comes from."""
    def run(epochs: int, seeds: int, datasets: dict[str, dict]) -> dict:
        return {"settings": {"epochs": epochs, "seeds": seeds, "target": 0.98}, "run": {},
                "datasets": {name: one_seed_entry(curves, full) for name, (curves, full) in datasets.items()}}

    base = run(12, 6, {"glas": ({"random": [0.6, 0.7, 0.73], "suggest": [0.6, 0.69, 0.72]}, 0.72),
                       "wbc": ({"random": [0.9, 0.92, 0.95], "suggest": [0.9, 0.95, 0.96]}, 0.95)})
    budget = run(36, 3, {"glas": ({"random": [0.6, 0.70, 0.74], "suggest": [0.6, 0.75, 0.78]}, 0.79)})
    (row,) = report.active_results(base, budget)
    assert row[2] == ("glas (36 epochs per round, 3 seeds): suggest 30 %, random not by 30 % (suggest above random "
                      "at every round: yes); wbc (12 epochs per round, 6 seeds): suggest 20 %, random 30 % (suggest "
                      "above random at every round: yes)")
    only_base = report.active_results(base)[0][2]
    assert only_base.startswith("glas (12 epochs per round, 6 seeds): suggest 30 %, random 30 %")
    assert report.active_results(None, budget) == []


def test_the_float32_rerun_sets_each_seeds_lead_beside_the_larger_budget_records():
    """The rerun in another precision tables its curve and, seed by seed, suggest's lead in both records."""
    def record(per_seed: list[dict], kernels: str, precision: str | None) -> dict:
        settings = {"datasets": "glas", "seeds": len(per_seed), "rounds": len(per_seed[0]["random"]), "epochs": 36,
                    "crop": 128, "jobs": 3, "steps_per_epoch": 20, "start": 0.1, "step": 0.1}
        cpu = {"model": "AMD EPYC", "kernels": kernels, **({"precision": precision} if precision else {})}
        return {"settings": settings, "run": {"cpu_threads": 1, "cpu": cpu},
                "datasets": {"glas": dataset_entry(per_seed)}}

    budget = record([seed_record(0.8, random=[0.6, 0.74, 0.75], suggest=[0.6, 0.70, 0.76]),
                     seed_record(0.8, random=[0.5, 0.75, 0.76], suggest=[0.5, 0.72, 0.77])], "AVX512", None)
    rerun = record([seed_record(0.8, random=[0.62, 0.70], suggest=[0.62, 0.76])], "AVX2", "float32")
    text = "\n".join(report.active_float32_section(rerun, budget))
    assert "on the CPU, no GPU, 1 thread (AVX2 kernels, AMD EPYC, float32)" in text
    assert "--seeds 1 --rounds 2 --epochs 36 --crop 128 --jobs 3 --out bench/results/active_budget_float32.json" in text
    assert "| glas | 2 | 20 % | 0.700 ± 0.000 | 0.760 ± 0.000 | +0.060 (1 of 1 seeds ahead) |" in text
    assert ("| data set | seed | round | random: AVX512 kernels, AMD EPYC | random: AVX2 kernels, AMD EPYC, "
            "float32 | suggest − random: AVX512 kernels, AMD EPYC | suggest − random: AVX2 kernels, AMD EPYC, "
            "float32 |") in text
    assert "| glas | 0 | 2 | 0.740 | 0.700 | -0.040 | +0.060 |" in text
    assert "| glas | 1 | 2 |" not in text
    assert ("- glas, round 2: suggest − random +0.060 (1 of 1 seeds ahead) here, -0.035 ± 0.005 (0 of 2 seeds ahead) "
            "in `active_budget.json`.") in text
    assert report.active_float32_section(None, budget) == []


def test_the_unlabelled_pool_scores_stand_beside_the_test_iou_of_each_weight():
    """A run with --score-unlabelled tables each weight's test IoU, says so in its header, and pairs each weight
    with random on the pool images no strategy had labelled, naming how many; its command reproduces it."""
    per_seed = [with_unlabelled(seed_record(0.8, random=[0.6, 0.74], suggest_w0=[0.6, 0.75], suggest_w1=[0.6, 0.70]),
                                {"random": 0.80, "suggest_w0": 0.81, "suggest_w1": 0.76}, 61),
                with_unlabelled(seed_record(0.8, random=[0.5, 0.75], suggest_w0=[0.5, 0.73], suggest_w1=[0.5, 0.72]),
                                {"random": 0.78, "suggest_w0": 0.80, "suggest_w1": 0.74}, 61)]
    settings = {"datasets": "glas", "seeds": 2, "rounds": 2, "epochs": 36, "crop": 128, "jobs": 3,
                "steps_per_epoch": 20, "start": 0.1, "step": 0.1, "weights": [0.0, 1.0], "score_unlabelled": True}
    data = {"settings": settings, "run": {"cpu_threads": 1, "cpu": {"model": "AMD EPYC", "kernels": "AVX2"}},
            "datasets": {"glas": dataset_entry(per_seed)}}
    text = "\n".join(report.active_unlabelled_section(data))
    assert "| data set | round | labelled | random: test IoU | suggest_w0: test IoU | suggest_w1: test IoU |" in text
    assert ("--seeds 2 --rounds 2 --epochs 36 --crop 128 --jobs 3 --weights 0,1 --score-unlabelled "
            "--out bench/results/active_unlabelled.json") in text
    assert ("- suggest_w0 − random on the pool images no strategy had labelled, paired by seed: round 2 (61 images) "
            "+0.015 ± 0.005 (2 of 2 seeds ahead)") in text
    assert ("- suggest_w1 − random on the pool images no strategy had labelled, paired by seed: round 2 (61 images) "
            "-0.040 ± 0.000 (0 of 2 seeds ahead)") in text
    assert report.active_unlabelled_section(None) == []


def test_the_wbc_check_of_the_unlabelled_pool_images_names_its_own_source():
    """The wbc run with --score-unlabelled has its own section, reproduced into its own file."""
    per_seed = [with_unlabelled(seed_record(0.9, random=[0.90, 0.92], suggest=[0.90, 0.94]),
                                {"random": 0.91, "suggest": 0.93}, 190)]
    settings = {"datasets": "wbc", "seeds": 1, "rounds": 2, "epochs": 12, "crop": 128, "jobs": 3,
                "steps_per_epoch": 20, "start": 0.1, "step": 0.1, "weights": [1.0], "score_unlabelled": True}
    data = {"settings": settings, "run": {"cpu_threads": 1, "cpu": {"model": "AMD EPYC", "kernels": "AVX2"}},
            "datasets": {"wbc": dataset_entry(per_seed)}}
    text = "\n".join(report.active_unlabelled_wbc_section(data))
    assert "--jobs 3 --score-unlabelled --out bench/results/active_unlabelled_wbc.json" in text
    assert "| wbc | 2 | 20 % | 0.920 ± 0.000 | 0.940 ± 0.000 |" in text
    assert ("- suggest − random on the pool images no strategy had labelled, paired by seed: round 2 (190 images) "
            "+0.020 (1 of 1 seeds ahead)") in text


def test_two_trainings_per_labelled_set_show_how_far_they_part_and_the_first_ones_gap():
    """A run with --replicates 2 tables the replicates' mean, says how far the two trainings of one labelled set
    part, and what the paired gap would have been with the first training alone; its command reproduces it."""
    def seed(random: list[float], suggest: list[float]) -> dict:
        record = seed_record(0.8, random=[0.6, sum(random) / 2], suggest=[0.6, sum(suggest) / 2])
        record["random"][1]["iou_replicates"], record["suggest"][1]["iou_replicates"] = random, suggest
        return record

    per_seed = [seed([0.76, 0.70], [0.72, 0.73]), seed([0.74, 0.72], [0.71, 0.74])]
    settings = {"datasets": "glas", "seeds": 2, "rounds": 2, "epochs": 36, "crop": 128, "jobs": 2,
                "steps_per_epoch": 20, "start": 0.1, "step": 0.1, "weights": [1.0], "replicates": 2}
    data = {"settings": settings, "run": {"cpu_threads": 1, "cpu": {"model": "AMD EPYC", "kernels": "AVX2"}},
            "datasets": {"glas": dataset_entry(per_seed)}}
    text = "\n".join(report.active_replicates_section(data))
    assert "trained 2 times, replicate k with training seed s + 100k" in text
    assert "--jobs 2 --replicates 2 --out bench/results/active_replicates.json" in text
    assert "| glas | 2 | 20 % | 0.730 ± 0.000 | 0.725 ± 0.000 |" in text
    assert "- glas: 2 trainings of the same labelled images part by (test IoU, largest − smallest, mean over " \
           "seeds) random round 2 0.040; suggest round 2 0.020" in text
    assert "- glas: suggest − random with the first training alone: round 2 -0.035 ± 0.005 (0 of 2 seeds ahead)" in text
    assert "- suggest − random, paired by seed: round 2 -0.005 ± 0.000 (0 of 2 seeds ahead)" in text
    assert report.active_replicates_section(None) == []
