"""The ``Examples`` sections of the public modules run as doctests (scikit-image style)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import napari_ghanet

#: modules that import napari or Qt are checked by the GUI tests, not here
GUI_MODULES = ("napari_ghanet._reader", "napari_ghanet._sample_data", "napari_ghanet._widget")


def _headless_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(napari_ghanet.__path__, "napari_ghanet."):
        if info.name.startswith(GUI_MODULES) or "._qt" in info.name:
            continue
        names.append(info.name)
    return sorted(names)


HEADLESS = _headless_modules()


def test_there_are_examples_to_run():
    total = 0
    for name in HEADLESS:
        finder = doctest.DocTestFinder(exclude_empty=True)
        total += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert total >= 20, f"only {total} doctest examples in the public modules"


@pytest.mark.parametrize("name", HEADLESS)
def test_module_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
