"""Researcher's side of napari-ghanet: cohort loading, cross-validated training of G-HANet
and its baselines, honest evaluation, model bundles for the plugin, synthetic test cohorts.

Command line: ``ghanet-train cv | bundle | synth | demo``. Imports the model code
(``napari_ghanet.models.ghanet``, ``losses``, ``baselines``, ``bundle``, ``features_io``), never
napari or Qt.
"""

__all__ = ["cohort", "labels", "metrics", "trainer", "cv", "bundle_cmd", "synth", "cli"]
