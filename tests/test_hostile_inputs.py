"""Hostile inputs (issue 26): crafted feature caches and feature files, HDF5 external
storage and FIFOs, a full disk during an HDF5 write, debris left by kill -9.

Each family has regression cases on crafted inputs and a seeded property-based test
(hypothesis) that generates new variants. The family table is in docs/security.md
(``## Hostile inputs``); ROI, manifest and survival tables are tested in
``test_hostile_text_inputs.py``.
"""

from __future__ import annotations
