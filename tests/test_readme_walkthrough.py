"""The README's walkthrough ("Your own slides, end to end") stays runnable: every line of its
command block names a real `cydata`/`cyseg` command and parses with that command's own options
(nothing is run), the steps come in the documented order, and its paths into ../shared/data exist
when the data are present."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cydata.cli import cli as cydata_cli
from cyseg.cli import cli as cyseg_cli

REPO = Path(__file__).resolve().parents[1]
TITLE = "Your own slides, end to end"
GROUPS: dict[str, click.Group] = {"cydata": cydata_cli, "cyseg": cyseg_cli}


def walkthrough() -> list[list[str]]:
    """The walkthrough's command lines, split as the shell splits them (comments dropped)."""
    readme = (REPO / "README.md").read_text()
    section = re.search(rf"^## {re.escape(TITLE)}\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, f"README.md lacks a '## {TITLE}' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, f"the '{TITLE}' section has no bash block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def steps() -> list[str]:
    return [" ".join(argv[:2]) for argv in walkthrough()]


def test_walkthrough_goes_from_annotations_to_a_segmented_slide():
    assert steps() == ["cydata import", "cydata split", "cydata split", "cyseg train", "cyseg evaluate",
                       "cyseg segment"]
    lines = walkthrough()
    assert all("--by-slide" in argv for argv in lines[1:3]) and "--val" in lines[3]


@pytest.mark.parametrize("argv", walkthrough(), ids=steps())
def test_every_walkthrough_line_parses_with_its_command(argv):
    program, name, *args = argv
    group = GROUPS[program]
    with click.Context(group, info_name=program) as ctx:
        command = group.get_command(ctx, name)
        assert command is not None, f"'{program} {name}' is not a command"
        command.make_context(name, list(args), parent=ctx)  # raises on unknown options and bad values


def test_walkthrough_reads_data_that_exist(shared_data):
    inputs = [arg for argv in walkthrough() for arg in argv if arg.startswith("../shared/data/")]
    assert inputs and all((REPO / arg).exists() for arg in inputs), inputs
