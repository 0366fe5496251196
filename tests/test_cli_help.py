"""What a new user reads first: ``--version`` and every ``--help``, plain and complete."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

import pooled_sessions
from pooled_sessions.tools import cli, demo

COMMANDS = [[], ["migrate"], ["inspect"], ["cleanup"], ["demo"]]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the command, by name; the demo parses its own arguments."""
    top = cli.build_parser()
    found = {"pooled-sessions": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    found["demo"] = demo.build_parser()
    return found


def test_every_command_has_a_parser_here() -> None:
    assert sorted(parsers()) == sorted(["pooled-sessions", *(c[0] for c in COMMANDS if c)])


@pytest.mark.parametrize("name", sorted(parsers()))
def test_every_option_and_command_says_what_it_does(name: str) -> None:
    parser = parsers()[name]
    for action in parser._actions:
        helps = [action.help]
        if isinstance(action, argparse._SubParsersAction):
            helps += [choice.help for choice in action._choices_actions]
        for text in helps:
            label = f"{name}: {'/'.join(action.option_strings) or action.dest}"
            assert text and text != argparse.SUPPRESS, f"{label} has no help"
            assert "`" not in text, f"{label}: markup in {text!r}"


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv) or "top")
def test_help_output_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: pooled-sessions")
    assert "`" not in out and "``" not in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"pooled-sessions {pooled_sessions.__version__}\n"
    assert version("pooled-sessions") == pooled_sessions.__version__
