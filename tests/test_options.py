"""The option declarations, docs/options.md and the ``ghanet`` parsers agree.

The page's tables are exactly what :func:`~napari_ghanet.options.markdown_tables` makes
from the declarations; every flag the page lists is in the parsers of the commands the
page names for its group (and in no other of the two), with the field as ``dest``, the
declared help, choices and default. Parser flags that are not options (``--out``,
``--encoder``, ``--model``, ``--progressive`` ...) are not checked here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from napari_ghanet.cli import embed as embed_cmd
from napari_ghanet.cli import predict as predict_cmd
from napari_ghanet.options import (
    ALL_GROUPS,
    EmbedOptions,
    GridOptions,
    OptionError,
    fields_of,
    from_args,
    markdown_tables,
)
from napari_ghanet.options.cli import BEGIN, END, flags_of, main, update_page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"
COMMANDS = {"ghanet embed": embed_cmd, "ghanet predict": predict_cmd}
#: defaults a command sets on purpose, as the page's text says ("reads patches on 4
#: threads unless told otherwise")
COMMAND_DEFAULTS = {("ghanet embed", "workers"): 4}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name, module in COMMANDS.items():
        sub = argparse.ArgumentParser(prog="ghanet").add_subparsers()
        out[name] = module.add_parser(sub)
    return out


def _page_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """``{group class name: [{column: cell}, ...]}`` from the generated part of the page."""
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    tables: dict[str, list[dict[str, str]]] = {}
    group = None
    header: list[str] = []
    for line in body.splitlines():
        if line.startswith("## "):
            group = line[3:].split(":", 1)[0].strip()
            tables[group] = []
            header = []
        elif line.startswith("|") and group is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not header:
                header = cells
            elif not set(line) <= set("|- "):
                tables[group].append(dict(zip(header, cells, strict=True)))
    return tables


def _page_commands(text: str) -> dict[str, tuple[str, ...]]:
    """``{group class name: (command, ...)}`` from the page's "which command" table."""
    out = {}
    for line in text.split(BEGIN, 1)[0].splitlines():
        m = re.fullmatch(r"\| (\w+Options) \| (.+) \|", line.strip())
        if m:
            out[m.group(1)] = tuple(re.findall(r"`(ghanet \w+)`", m.group(2)))
    return out


def test_the_page_tables_are_the_generated_tables():
    text = PAGE.read_text(encoding="utf-8")
    generated = text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    assert generated.strip() == markdown_tables().strip()
    assert update_page(text) == text
    # every group and every declared field has its row, in declaration order
    tables = _page_tables(text)
    assert list(tables) == [cls.__name__ for cls in ALL_GROUPS]
    for cls in ALL_GROUPS:
        assert [r["field"].strip("`") for r in tables[cls.__name__]] == [
            f.name for f in fields_of(cls)]


def test_every_documented_flag_is_in_the_parsers_with_its_declaration():
    text = PAGE.read_text(encoding="utf-8")
    tables, commands, parsers = _page_tables(text), _page_commands(text), _parsers()
    assert set(commands) == set(tables), "the page says which commands take each group"
    by_name = {cls.__name__: cls for cls in ALL_GROUPS}
    checked = 0
    for group, rows in tables.items():
        fields = {f.name: f for f in fields_of(by_name[group])}
        for row in rows:
            f = fields[row["field"].strip("`")]
            flags = tuple(re.findall(r"`(--[\w-]+)`", row["flag"]))
            assert flags == flags_of(f), (group, row)
            assert flags or row["flag"] == "(library only)"
            for cmd, parser in parsers.items():
                actions = parser._option_string_actions
                for flag in flags:
                    if cmd not in commands[group]:
                        assert flag not in actions, f"{cmd} has {flag}; the page says it has not"
                        continue
                    assert flag in actions, f"{cmd} has no {flag} ({group}.{f.name})"
                    action = actions[flag]
                    assert action.dest == f.name, (cmd, flag, action.dest)
                    assert action.help.replace("%%", "%").startswith(f.info.help), (cmd, flag)
                    if f.info.choices and f.kind in ("str", "int", "float"):
                        assert tuple(action.choices) == f.info.choices, (cmd, flag)
                    else:
                        assert action.choices is None, (cmd, flag)
                    checked += 1
    assert checked >= 40  # the two commands' option flags, not an empty loop


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_the_parsed_defaults_are_the_declared_defaults(cmd):
    text = PAGE.read_text(encoding="utf-8")
    commands = _page_commands(text)
    parser = _parsers()[cmd]
    args = parser.parse_args(["--out", "x"])
    for cls in ALL_GROUPS:
        if cmd not in commands[cls.__name__]:
            continue
        overrides = {name: v for (c, name), v in COMMAND_DEFAULTS.items()
                     if c == cmd and name in {f.name for f in fields_of(cls)}}
        # the declared defaults (and the command's own, named above)
        assert from_args(cls, args) == cls(**overrides), (cmd, cls.__name__)


def test_a_flag_value_reaches_its_group_and_a_bad_one_names_the_flag():
    parser = _parsers()["ghanet predict"]
    args = parser.parse_args(["--out", "x", "--batch-size", "8", "--min-tissue", "0.25",
                              "--mpp", "0.5"])
    assert from_args(EmbedOptions, args).batch_size == 8
    assert from_args(GridOptions, args) == GridOptions(min_tissue_fraction=0.25, mpp=0.5)
    with pytest.raises(OptionError) as info:
        from_args(GridOptions, parser.parse_args(["--out", "x", "--min-tissue", "1.5"]))
    assert info.value.flag == "--min-tissue" and "<= 1" in info.value.reason


def test_the_page_is_regenerated_and_checked_in_place(tmp_path, capsys):
    page = tmp_path / "options.md"
    good = PAGE.read_text(encoding="utf-8")
    page.write_text(good.replace("| `batch_size` | `--batch-size` | int | 64 |",
                                 "| `batch_size` | `--batch-size` | int | 32 |"))
    assert page.read_text() != good
    assert main(["--check", str(page)]) == 1  # out of date, nothing written
    assert "| int | 32 |" in page.read_text()
    assert main([str(page)]) == 0
    assert page.read_text() == good
    assert main(["--check", str(page)]) == 0
    page.write_text("# no markers\n")
    assert main([str(page)]) == 2
    assert "no '<!-- options:begin" in capsys.readouterr().err
