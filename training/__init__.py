"""Researcher's side of napari-ghanet: cohort loading, cross-validated training of G-HANet
and its baselines, honest evaluation, model bundles for the plugin, synthetic test cohorts
and the recipe of the bundled demo model.

Command line: ``ghanet-train cv | bundle | synth | demo``. Imports the library
(``napari_ghanet.models`` (G-HANet, losses, baselines, bundles), ``napari_ghanet.io.features``,
``napari_ghanet.cohort`` for folds run as Dask tasks), never napari or Qt, and nothing of the
``ghanet`` command line.
"""

__all__ = ["cohort", "labels", "metrics", "trainer", "cv", "bundle_cmd", "synth", "demo_recipe",
           "cli"]
