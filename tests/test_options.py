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
from napari_ghanet.training import cli as train_cli

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
from napari_ghanet.options.cli import BEGIN, DOC_GROUPS, END, flags_of, main, update_page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"
COMMANDS = {"ghanet embed": embed_cmd, "ghanet predict": predict_cmd,
            "ghanet-train cv": train_cli, "ghanet-train bundle": train_cli,
            "ghanet-train synth": train_cli, "ghanet-train demo": train_cli}
#: the arguments a command needs to parse at all
REQUIRED = {"ghanet-train cv": ["--cohort", "c", "--signatures", "s", "--splits", "d",
                                "--model", "ghanet", "--out", "x"],
            "ghanet-train bundle": ["run", "--out", "x"], "ghanet-train synth": ["--out", "x"],
            "ghanet-train demo": []}
#: defaults a command sets on purpose, as the page's text says ("reads patches on 4
#: threads unless told otherwise")
COMMAND_DEFAULTS = {("ghanet embed", "workers"): 4}
#: groups a command takes only in part, as the page's table says
PARTLY = {("ghanet-train cv", "ExecutionOptions"): ("cluster", "scheduler"),
          ("ghanet embed", "DicomWebOptions"): ("dicomweb_token_file", "dicomweb_query")}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name, module in COMMANDS.items():
        if module is train_cli:
            [sub] = [a for a in train_cli.build_parser()._actions
                     if isinstance(a, argparse._SubParsersAction)]
            out[name] = sub.choices[name.split()[-1]]
            continue
        sub = argparse.ArgumentParser(prog="ghanet").add_subparsers()
        out[name] = module.add_parser(sub)
    return out


def _flag_help(f, flag: str) -> str:
    """The help a flag of ``f`` starts with (a negating flag says what it does)."""
    if flag == f.info.negate:
        return f.info.negate_help or f"do not {f.info.help}"
    return f.info.help


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
            out[m.group(1)] = tuple(re.findall(r"`(ghanet(?:-train)? \w+)`", m.group(2)))
    return out


def test_the_page_tables_are_the_generated_tables():
    text = PAGE.read_text(encoding="utf-8")
    generated = text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    assert generated.strip() == markdown_tables().strip()
    assert update_page(text) == text
    # every group and every declared field has its row, in declaration order
    tables = _page_tables(text)
    assert list(tables) == [cls.__name__ for cls in DOC_GROUPS]
    assert set(ALL_GROUPS) < set(DOC_GROUPS)
    from napari_ghanet.options import PREDICT_GROUPS

    assert set(PREDICT_GROUPS.values()) <= set(ALL_GROUPS)  # every prediction group listed
    for cls in DOC_GROUPS:
        assert [r["field"].strip("`") for r in tables[cls.__name__]] == [
            f.name for f in fields_of(cls)]


def test_every_documented_flag_is_in_the_parsers_with_its_declaration():
    text = PAGE.read_text(encoding="utf-8")
    tables, commands, parsers = _page_tables(text), _page_commands(text), _parsers()
    assert set(commands) == set(tables), "the page says which commands take each group"
    by_name = {cls.__name__: cls for cls in DOC_GROUPS}
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
                    takes = cmd in commands[group] and f.name in PARTLY.get(
                        (cmd, group), (f.name,))
                    if not takes:  # absent, or another group's option of that flag
                        assert flag not in actions or not actions[flag].help.replace(
                            "%%", "%").startswith(_flag_help(f, flag)), (
                            f"{cmd} has {flag} of {group}; the page says it has not")
                        continue
                    assert flag in actions, f"{cmd} has no {flag} ({group}.{f.name})"
                    action = actions[flag]
                    assert action.dest == f.name, (cmd, flag, action.dest)
                    assert action.help.replace("%%", "%").startswith(_flag_help(f, flag)), (
                        cmd, flag)
                    if f.info.choices and (f.kind in ("str", "int", "float") or f.info.many):
                        assert tuple(action.choices) == f.info.choices, (cmd, flag)
                    else:
                        assert action.choices is None, (cmd, flag)
                    checked += 1
    assert checked >= 65  # the three commands' option flags, not an empty loop


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_the_parsed_defaults_are_the_declared_defaults(cmd):
    text = PAGE.read_text(encoding="utf-8")
    commands = _page_commands(text)
    parser = _parsers()[cmd]
    args = parser.parse_args(REQUIRED.get(cmd, ["--out", "x"]))
    for cls in DOC_GROUPS:
        if cmd not in commands[cls.__name__] or (cmd, cls.__name__) in PARTLY:
            continue
        overrides = {name: v for (c, name), v in COMMAND_DEFAULTS.items()
                     if c == cmd and name in {f.name for f in fields_of(cls)}}
        # the declared defaults (and the command's own, named above); a required flag
        # holds what the command line gave
        given = {f.name: getattr(args, f.name) for f in fields_of(cls) if f.info.required}
        assert from_args(cls, args) == cls(**overrides, **given), (cmd, cls.__name__)


def test_ghanet_train_cv_models_are_the_registry_and_reach_the_run_config():
    from napari_ghanet.models.baselines import MODEL_NAMES
    from napari_ghanet.options import CVOptions
    from napari_ghanet.options.training import MODEL_CHOICES

    assert MODEL_CHOICES == tuple(MODEL_NAMES)
    cv = _parsers()["ghanet-train cv"]
    args = cv.parse_args([*REQUIRED["ghanet-train cv"][:-4], "--model", "ghanet", "abmil",
                          "--topk-ratio", "0.1", "0.5", "--folds", "0", "2", "--out", "x"])
    opts = from_args(CVOptions, args)
    assert (opts.model, opts.topk_ratio, opts.folds) == (("ghanet", "abmil"), (0.1, 0.5), (0, 2))
    with pytest.raises(OptionError, match="topk_ratio must be <= 1"):
        from_args(CVOptions, cv.parse_args([*REQUIRED["ghanet-train cv"], "--topk-ratio", "2"]))
    with pytest.raises(SystemExit):  # --model is required and checked against its choices
        cv.parse_args([*REQUIRED["ghanet-train cv"][:-4], "--model", "resnet", "--out", "x"])


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


# --------------------------------------------------------------------------- napari.yaml

MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


def test_the_manifest_settings_are_the_declarations_field_by_field():
    import yaml

    from napari_ghanet._settings_store import SETTINGS_VERSION
    from napari_ghanet.options import persisted_fields
    from napari_ghanet.options.surfaces import NOT_OPTIONS, update_manifest

    text = MANIFEST.read_text(encoding="utf-8")
    assert update_manifest(text) == text, "run python -m napari_ghanet.options"
    props = yaml.safe_load(text)["contributions"]["configurations"]["widget"]["properties"]
    assert props.pop("settings_version")["default"] == SETTINGS_VERSION
    declared = persisted_fields()
    assert list(props) == [*declared, *NOT_OPTIONS]  # names, in declaration order
    json_type = {"bool": "boolean", "int": "integer", "float": "number", "str": "string",
                 "path": "string"}
    for key, f in declared.items():
        p, i = props[key], f.info
        assert p["type"] == json_type[f.kind], key
        assert p["default"] == ("" if f.default is None else f.default), key
        assert type(p["default"]) is type("" if f.default is None else f.default), key
        assert p.get("enum") == (list(i.choices) if i.choices else None), key
        low = "exclusiveMinimum" if i.low_open else "minimum"
        assert p.get(low) == (None if i.choices else i.low), key
        assert p.get("maximum") == (None if i.choices else i.high), key
        assert p["description"].lower().startswith(i.help.lower()), key
        assert p["title"] == (i.label or key.replace("_", " ").capitalize()), key
    assert {"batch_size", "top_k", "heatmap_overlap", "qc_on"} <= set(declared)


def test_the_manifest_is_regenerated_in_place(tmp_path):
    good = MANIFEST.read_text(encoding="utf-8")
    stale = tmp_path / "napari.yaml"
    stale.write_text(good.replace("default: 64", "default: 32"), encoding="utf-8")
    page = tmp_path / "options.md"
    page.write_text(PAGE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["--check", str(page), "--manifest", str(stale)]) == 1
    assert main([str(page), "--manifest", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == good


# --------------------------------------------------------------------------- one spelling

#: the entry points: no default of a declared option is spelled here
ENTRY_POINTS = [*sorted((ROOT := Path(__file__).resolve().parents[1]).glob(
    "src/napari_ghanet/cli/*.py")), *sorted(ROOT.glob("src/napari_ghanet/_qt/*.py")),
    ROOT / "src/napari_ghanet/_widget.py", ROOT / "training/cli.py",
    ROOT / "training/demo_recipe.py", ROOT / "src/napari_ghanet/inference/embedding.py",
    ROOT / "src/napari_ghanet/inference/stages/slide.py"]


def _declared_defaults() -> dict[str, set]:
    """name (field and flag spellings) -> the declared defaults of options of that name."""
    out: dict[str, set] = {}
    for cls in DOC_GROUPS:
        for f in fields_of(cls):
            if f.default is None or isinstance(f.default, bool | tuple) or f.default in (
                    0, "auto"):
                continue  # None, switches, lists, 0 and auto say nothing on their own
            for name in {f.name, f.key, f.flag.lstrip("-").replace("-", "_")}:
                out.setdefault(name, set()).add(f.default)
    return out


def _spelled_defaults(path: Path, declared: dict[str, set]) -> list[str]:
    """``name=<literal>`` (keywords, parameter defaults, dict entries, add_argument's
    default) in ``path`` whose literal is the declared default of an option of that name."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def check(name, node, line):
        if isinstance(node, ast.Constant) and name in declared and any(
                type(node.value) is type(d) and node.value == d for d in declared[name]):
            found.append(f"{path.name}:{line}: {name}={node.value!r}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg:
                    check(kw.arg, kw.value, node.lineno)
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)
                     and isinstance(a.value, str) and a.value.startswith("--")]
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            for flag in flags:
                if default is not None:
                    check(flag.lstrip("-").replace("-", "_"), default, node.lineno)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(
                node.args.defaults) + list(node.args.kw_defaults)
            for a, d in zip(args, defaults):
                if d is not None:
                    check(a.arg, d, node.lineno)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    check(k.value, v, node.lineno)
    return found


def test_no_entry_point_spells_a_declared_default():
    declared = _declared_defaults()
    assert declared["batch_size"] == {64, 16} and declared["top_k"] == {10}
    found = [hit for path in ENTRY_POINTS for hit in _spelled_defaults(path, declared)]
    assert found == [], "spelled again (read the declaration instead): " + "; ".join(found)
    # napari.yaml: the persisted options only in the generated section
    from napari_ghanet.options import persisted_fields
    from napari_ghanet.options.surfaces import MANIFEST_BEGIN, MANIFEST_END

    text = MANIFEST.read_text(encoding="utf-8")
    outside = text.split(MANIFEST_BEGIN)[0] + text.split(MANIFEST_END)[1]
    assert not [k for k in persisted_fields() if f"        {k}:" in outside]


def test_the_scan_finds_a_spelled_default(tmp_path):
    bad = tmp_path / "entry.py"
    bad.write_text("def f(batch_size=64):\n    return g(top_k=10, **{'heatmap_overlap': 0.5})\n"
                   "p.add_argument('--epochs', type=int, default=20)\n")
    hits = _spelled_defaults(bad, _declared_defaults())
    assert len(hits) == 3 and any("top_k=10" in h for h in hits)
