"""``ghanet-train --help`` and each command's help: plain text, a help line for every
option and its default."""

from __future__ import annotations

import argparse
import re

import pytest
from napari_ghanet.training.cli import build_parser, main

COMMANDS = ["cv", "bundle", "synth", "demo"]
MARKUP = re.compile(r"``|:(func|class|mod|meth|attr):|`[^`]+`_")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


def _help(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*args, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_plain_text(command, capsys):
    text = _help([command] if command else [], capsys)
    assert text.startswith("usage: ghanet-train")
    assert not MARKUP.search(text), MARKUP.search(text)


def test_every_option_has_a_help_line_and_its_default(capsys):
    commands = _commands()
    assert sorted(k for k in commands if k) == sorted(COMMANDS)
    for name, parser in commands.items():
        text = " ".join(_help([name] if name else [], capsys).split())
        for action in parser._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS
                    or isinstance(action, argparse._HelpAction)):
                continue
            flag = max(action.option_strings, key=len)
            assert action.help, f"{name} {flag} has no help"
            shows_default = (action.required or action.default is None
                             or action.default is False or "default" in action.help)
            if not shows_default:
                shown = parser.formatter_class("x")._get_help_string(action)
                assert "(default: " in shown, f"{name} {flag}: no default in {shown!r}"
                value = (str(action.default) if not isinstance(action.default, list | dict)
                         else None)
                if value is not None:
                    assert f"(default: {value})" in text, f"{name} {flag}"


def test_the_documented_defaults_are_the_ones_used():
    cv = _commands()["cv"]
    args = cv.parse_args(["--cohort", "c.csv", "--signatures", "s.csv", "--splits", "d",
                          "--model", "ghanet", "--out", "o"])
    assert (args.epochs, args.weight_decay, args.n_bins, args.p_threshold) == (20, 1e-5, 4, 0.05)
    demo = _commands()["demo"].parse_args([])
    assert (demo.patients, demo.epochs, demo.folds, demo.seed) == (120, 30, 5, 2026)
