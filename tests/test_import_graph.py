"""Import rules as tests: no import circle inside the package (module- and function-level
imports alike); intra-package imports inside a function only in the faces or where listed
with a reason; and the headless modules and command lines never import napari or Qt."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"napari_ghanet": ROOT / "src" / "napari_ghanet",
            "napari_ghanet.training": ROOT / "training"}
GUI_MODULES = ("napari_ghanet._reader", "napari_ghanet._sample_data", "napari_ghanet._widget")
GUI_PACKAGES = ("napari_ghanet._qt",)
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _modules() -> dict[str, Path]:
    """Module name -> file, with training/ under its installed name."""
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if pkg == "napari_ghanet" and name.startswith("napari_ghanet.training"):
                continue
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (not under TYPE_CHECKING)."""
    return _imports_of_tree(name, path, ast.parse(path.read_text(), str(path)), modules)


def _imports_of_tree(name: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and _is_type_checking(node) for b in node.body for n in ast.walk(b)}
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


#: the faces: entry points and commands that import the core only when a command or a
#: widget needs it (fast ``--help``, light plugin discovery, Qt-free headless paths)
FACES = ("napari_ghanet._reader", "napari_ghanet._sample_data", "napari_ghanet._widget",
         "napari_ghanet._qt", "napari_ghanet.cli", "napari_ghanet.training.cli")

#: every intra-package import made inside a function of the library (outside the faces):
#: (importing module, imported module) -> why it is not at the top
DEFERRED = {
    ("napari_ghanet._settings_store", "napari_ghanet.options"):
        "the settings module stays numpy-free (0.05 s to import, 0.25 s with the options "
        "it reads its defaults from)",
    ("napari_ghanet.options.groups", "napari_ghanet.preprocessing.tissue"):
        "the options (read by every `ghanet --help`) do not import the slide reader",
    ("napari_ghanet.options.groups", "napari_ghanet.preprocessing.roi"):
        "the options (read by every `ghanet --help`) do not import shapely",
    ("napari_ghanet.training.cv", "napari_ghanet.cohort.engine"):
        "the cohort package (Dask, the prediction pipeline) only for folds run as tasks",
    ("napari_ghanet.training.synth", "napari_ghanet.io.features"):
        "synthetic cohort tables without torch; torch only to write the feature files",
    # `ghanet-train demo --help` reads only demo_recipe's options: the recipe's steps
    # (torch, pandas, the slide renderer) are imported by the functions that run them
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.datasets.synthetic"):
        "the slide renderer (0.5 s of imports) only when the recipe renders slides",
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.encoders"):
        "the encoders import torch: only when the recipe embeds its slides",
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.inference.stages"):
        "the pipeline imports torch: only when the recipe embeds its slides",
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.training.bundle_cmd"):
        "bundle writing imports torch: only when the recipe writes its bundle",
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.training.cv"):
        "cross-validation imports torch and pandas: only when the recipe trains",
    ("napari_ghanet.training.demo_recipe", "napari_ghanet.training.trainer"):
        "the trainer imports torch: only when the recipe trains",
}


def _deferred(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports inside a function (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    inner = ast.Module(body=[n for fn in ast.walk(tree)
                             if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                             for n in fn.body], type_ignores=[])
    return _imports_of_tree(name, path, inner, modules)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    # the graph is real: the layers the data flow goes through are linked
    assert "napari_ghanet.inference.stages" in graph["napari_ghanet.inference.predict"]
    assert "napari_ghanet.cohort" in graph["napari_ghanet.cli.embed"]  # embed_cohort ->
    assert "napari_ghanet.inference.stages" in graph["napari_ghanet.cohort.tasks"]  # embed_to_file
    assert "napari_ghanet.inference.stages" in graph["napari_ghanet.training.demo_recipe"]
    assert not any(m.startswith("napari_ghanet.cli") for m in
                   set().union(*(graph[t] for t in graph if ".training" in t)))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it can fail


def test_intra_package_imports_inside_functions_are_the_faces_or_listed():
    modules = _modules()
    found = {(m, t) for m, p in modules.items() if not m.startswith(FACES)
             for t in _deferred(m, p, modules)}
    assert found == set(DEFERRED), (
        f"new: {sorted(found - set(DEFERRED))}; gone: {sorted(set(DEFERRED) - found)}")
    # the scan sees a face's deferred import (ghanet demo's window path imports the widget)
    cli_demo = "napari_ghanet.cli.demo"
    assert "napari_ghanet._widget" in _deferred(cli_demo, modules[cli_demo], modules)


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints a JSON dict on its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_REPORT = ("import json, sys; print(json.dumps({'gui': sorted(m for m in sys.modules "
           f"if m.split('.')[0] in {FORBIDDEN!r}), 'n': len(sys.modules)}}))")


def test_headless_modules_and_ghanet_predict_import_no_gui():
    headless = sorted(m for m in _modules() if m not in GUI_MODULES
                      and not m.startswith(GUI_PACKAGES))
    assert "napari_ghanet.inference.stages" in headless and "napari_ghanet.cli" in headless
    code = "\n".join([
        "import contextlib, importlib, io",
        f"for m in {headless!r}: importlib.import_module(m)",
        "from napari_ghanet.cli import main",
        "for argv in (['predict', '--help'], ['embed', '--help'], ['demo', '--help']):",
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):",
        "        main(argv)",
        _REPORT,
    ])
    result = _fresh(code)
    assert result["gui"] == [] and result["n"] > 100


def test_ghanet_train_imports_no_gui():
    code = "\n".join([
        "import contextlib, io",
        "from napari_ghanet.training.cli import main",
        "for argv in (['cv', '--help'], ['demo', '--help']):",
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):",
        "        main(argv)",
        _REPORT,
    ])
    assert _fresh(code)["gui"] == []
    # the check sees a GUI import when there is one
    assert _fresh("import qtpy\n" + _REPORT)["gui"]


#: the layers, lowest first (docs/architecture.md, "Layers"): a module may import its own
#: layer's packages and those below, never one above. The parts named by the first
#: component below ``napari_ghanet`` (a package or a top-level module); ``<root>`` is
#: ``napari_ghanet/__init__.py`` (the lazily resolved public API).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "errors"),
    ("device",),
    ("io",),
    ("preprocessing",),
    ("encoders",),
    ("models",),
    ("options",),
    ("inference",),
    ("cohort", "datasets"),
    ("_settings_store", "_reader"),
    ("_qt", "_sample_data"),
    ("_widget",),
    ("cli",),
    ("<root>",),
    ("training",),
)
LEVEL = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """The layer part of a module: ``training`` for the researcher package, else the first
    component below ``napari_ghanet``."""
    rest = module.split(".")[1:]
    if not rest:
        return "<root>"
    return "training" if rest[0] == "training" else rest[0]


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(_part(m), set()).update(
            _part(t) for t in targets if _part(t) != _part(m))
    return out


def test_layers_only_point_down_and_packages_form_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    parts = {_part(m) for m in modules}
    assert parts == set(LEVEL), f"not in LAYERS: {parts - set(LEVEL)}; gone: {set(LEVEL) - parts}"
    up = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                if LEVEL[_part(t)] > LEVEL[_part(m)])
    assert up == [], "imports running up the layers"
    packages = _package_graph(graph)
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))
    # the library never imports the researcher package (function-local imports included)
    assert not [m for m, targets in graph.items() if _part(m) != "training"
                and any(_part(t) == "training" for t in targets)]
    # the checks see what they check: the data flow's packages are linked, downwards
    assert {"encoders", "io"} <= packages["inference"] and "io" in packages["encoders"]
    assert _cycle({"io": {"encoders"}, "encoders": {"io"}}) is not None


def _from_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [a.name for a in node.names]


#: a command module that imports another command's helpers, and why (none: shared helpers
#: live in cli/_*.py)
CLI_SHARED: dict[tuple[str, str], str] = {}


def test_no_command_imports_another_commands_helpers_or_a_private_name():
    modules = _modules()
    cli = {}
    private, shared_inside = [], []
    for m, p in modules.items():
        for target, names in _from_imports(p):
            if (m.startswith("napari_ghanet.cli.") and target.startswith("napari_ghanet.cli.")
                    and not target.rpartition(".")[2].startswith("_") and target != m):
                cli[m, target] = names
            # a private name is shared within its package, never across packages
            hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if hidden and target in modules:
                (private if _part(target) != _part(m) else shared_inside).append(
                    f"{m} <- {target}: {hidden}")
    assert set(cli) == set(CLI_SHARED), f"commands importing commands: {cli}"
    assert private == []
    # the scan sees private names (the synthetic slide's parts share theirs)
    assert any(".datasets.synthetic." in x for x in shared_inside)


#: modules outside the plugin's GUI modules that import napari, and where
GUI_IMPORT_ELSEWHERE = {
    "napari_ghanet.cli.demo": "inside the function that opens ghanet demo's window",
}


def test_napari_and_qt_are_imported_only_by_the_listed_modules():
    found = set()
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n.split(".")[0] in FORBIDDEN for n in names):
                found.add(m)
    gui = {m for m in found if m in GUI_MODULES or m.startswith(GUI_PACKAGES)}
    assert found - gui == set(GUI_IMPORT_ELSEWHERE)
    assert "napari_ghanet._widget" in gui  # the scan sees the GUI's imports
