"""The test extra installs what the optional features need, so their tests run rather
than skip: an import that fails here would otherwise turn those tests into skips."""

from __future__ import annotations

import importlib


def test_spatialdata_imports_with_the_test_extra():
    # spatialdata 0.7.0 needs pkg_resources (xarray-schema); pyproject pins setuptools
    # below 81 in the spatial and test extras for it
    sd = importlib.import_module("spatialdata")
    assert hasattr(sd, "SpatialData")
