"""The CLI explains itself: every option of every command has help text, every option with a
fixed set of values lists them, and every command's help ends with examples."""

import argparse
import shlex

import pytest

from fulcrum.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_argument_of_every_command_has_help(name):
    command = _commands()[name]
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in command._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())
    ]
    assert not missing, f"fulcrum {name}: no help text for {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_help_ends_with_examples_that_parse(name):
    text = _commands()[name].format_help()
    assert "examples:" in text, f"fulcrum {name} --help shows no examples"
    lines = [line.strip() for line in text.split("examples:", 1)[1].splitlines() if line.strip()]
    assert lines and all(line.startswith(f"fulcrum {name}") for line in lines)
    for line in lines:  # each example is a command the parser accepts
        argv = shlex.split(line.split("  #")[0])[1:]
        assert build_parser().parse_args(argv).command == name
