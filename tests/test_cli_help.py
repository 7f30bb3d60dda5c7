"""Every sub-command's options say what they do and show their defaults."""

from __future__ import annotations

import argparse

import pytest

from melecole.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_options_have_help_with_their_defaults(name):
    missing, silent = [], []
    for action in _subcommands()[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        if not action.help:
            missing.append(label)
        elif action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
            silent.append(label)
    assert not missing, f"{name}: options without help: {missing}"
    assert not silent, f"{name}: options whose help hides the default: {silent}"


def test_top_level_help_describes_segment_as_it_is():
    help_text = _subcommands()["segment"].description + " " + build_parser().format_help()
    assert "agglomeration" in help_text
