"""What ``ghanet predict`` and ``ghanet demo`` share when they show and write one
prediction: the bundle (or the demo model) loaded with a message naming which, the text
report's lines and the exports written through the export registry."""

from __future__ import annotations

from pathlib import Path

from napari_ghanet.errors import BundleError, PredictionError
from napari_ghanet.models.risk import risk_text

__all__ = ["load_model", "report_lines", "write_exports"]


def report_lines(r: dict) -> list[str]:
    """The lines every text report shows (CLI summary and ``ghanet demo --headless``):
    risk group wording, survival horizon, QC counts and the regions used."""
    p = r.get("prediction", {})
    group = p.get("risk_group", "?")
    lines = [
        f"{risk_text(group, p.get('percentile_in_training_cohort'))}; "
        f"risk {p.get('risk', float('nan')):.4f}",
    ]
    dist = r.get("distribution") or {}
    if dist.get("verdict"):
        reasons = dist.get("reasons") or []
        lines.append(f"training distribution: {dist['verdict']}"
                     + (f" ({'; '.join(reasons)})" if reasons else "")
                     + (f"; {dist['note']}" if dist.get("note") and not reasons else ""))
    if r.get("horizon_note"):
        lines.append(str(r["horizon_note"]))
    qc = r.get("qc")
    if qc:
        f = qc.get("flagged", {})
        lines.append(
            f"QC: {f.get('total', 0)} of {qc.get('n_patches', 0)} patches flagged and left out"
            f" (pen {f.get('pen', 0)}, fold {f.get('fold', 0)}, blur {f.get('blur', 0)})"
            + (f"; {qc['note']}" if qc.get("note") else "")
        )
    else:
        lines.append("QC: off")
    regs = r.get("regions")
    for k, reg in enumerate(regs if isinstance(regs, list) else [regs]):
        if not reg:
            continue
        where = f"slide {k}: " if isinstance(regs, list) else ""
        lines.append(
            f"regions: {where}{reg['n_include_regions']} include "
            f"({reg['include_area_mm2']:.2f} mm^2), {reg['n_exclude_regions']} exclude "
            f"({reg['exclude_area_mm2']:.2f} mm^2); {reg['n_kept']} of {reg['n_patches']} "
            f"patches kept ({reg['n_outside_include']} outside the include regions, "
            f"{reg['n_excluded']} excluded)"
        )
    return lines


def load_model(path: Path | None):
    """The bundle at ``path``, or the bundled demo model; a BundleError names which."""
    from napari_ghanet.models.bundle import demo_bundle_path, load_bundle

    try:
        return load_bundle(path if path is not None else demo_bundle_path())
    except BundleError as e:
        hint = "" if path is not None else " (the bundled demo model is missing)"
        raise BundleError(f"cannot load the model{hint}: {e}") from e


def write_exports(prediction, out: Path, kinds=None) -> dict[str, Path]:
    """:func:`~napari_ghanet.inference.export_registry.export_all` (the registry's default
    kinds, or ``kinds``, ``--export``), with an unwritable folder as a PredictionError."""
    from napari_ghanet.inference.export_registry import export_all

    try:
        return export_all(prediction, out, kinds)
    except OSError as e:
        raise PredictionError(f"cannot write the results to {out}: {e}") from e
