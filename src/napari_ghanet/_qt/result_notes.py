"""The notes under the survival plot of the results panel: the slides of a patient
prediction, the regions of interest used, the artifact QC's count and the warnings.

:class:`ResultNotes` owns four word-wrapped labels (the panel lays them out) and fills
them from a Prediction's reports; a label without anything to say is hidden.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QLabel

from napari_ghanet._qt.layers import QC_COLOURS

__all__ = ["ResultNotes"]


def _mm2(value) -> str:
    try:
        return f"{float(value):.3g} mm\u00b2"
    except (TypeError, ValueError):
        return "area unknown"


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _wrapped(tooltip: str = "") -> QLabel:
    label = QLabel("")
    label.setWordWrap(True)
    if tooltip:
        label.setToolTip(tooltip)
    return label


class ResultNotes:
    """Slides, regions, QC and warnings labels of one Prediction.

    Attributes
    ----------
    slides_label, regions_label, qc_label, warnings_label : QLabel
    """

    def __init__(self) -> None:
        self.slides_label = _wrapped()
        self.regions_label = _wrapped("Regions of interest used and the patches they removed")
        self.qc_label = _wrapped("Patches left out by the artifact QC, by reason (colours "
                                 "as in the 'G-HANet · QC' layer)")
        self.warnings_label = _wrapped()

    def labels(self) -> list[QLabel]:
        """The labels, top to bottom."""
        return [self.slides_label, self.regions_label, self.qc_label, self.warnings_label]

    def show(self, p) -> None:
        """Fill every label from Prediction ``p``."""
        self.show_slides(p)
        self.show_regions_report(getattr(p, "regions_report", None))
        self.show_qc_report(getattr(p, "qc_report", None))
        self.show_warnings(list(p.warnings))

    def show_slides(self, p) -> None:
        """The slides of a several-slide (patient) prediction and their patches."""
        if p.n_slides <= 1:
            self.slides_label.setVisible(False)
            return
        counts = np.bincount(p.slide_index, minlength=p.n_slides)
        share = np.bincount(p.slide_index, weights=p.morphology_attention,
                            minlength=p.n_slides)
        rows = "".join(
            f"<br>&bull; {s.get('name', f'slide {k + 1}')}: {int(n):,} patches, "
            f"{100 * a:.0f} % of the attention"
            for k, (s, n, a) in enumerate(zip(p.slides, counts, share)))
        who = p.slide.get("patient")
        self.slides_label.setText(
            f"<b>{p.n_slides} slides</b>{f' of {who}' if who else ''}, one bag:{rows}")
        self.slides_label.setVisible(True)

    def show_regions_report(self, report) -> None:
        """Regions used (count, mm^2) and the patches they removed (None: no regions)."""
        reports = report if isinstance(report, list) else [report]
        parts = []
        for k, r in enumerate(reports):
            if not r or not (r.get("n_include_regions") or r.get("n_exclude_regions")):
                continue
            where = f"slide {k + 1}: " if len(reports) > 1 else ""
            inc, exc = int(r.get("n_include_regions", 0)), int(r.get("n_exclude_regions", 0))
            text = []
            if inc:
                text.append(f"{inc} include ({_mm2(r.get('include_area_mm2'))}), "
                            f"{int(r.get('n_outside_include', 0)):,} patches outside")
            if exc:
                text.append(f"{exc} exclude ({_mm2(r.get('exclude_area_mm2'))}), "
                            f"{int(r.get('n_excluded', 0)):,} patches removed")
            parts.append(where + "; ".join(text) +
                         f"; {int(r.get('n_kept', 0)):,} of {int(r.get('n_patches', 0)):,} kept")
        self.regions_label.setText("<b>Regions:</b> " + "<br>".join(parts) if parts else "")
        self.regions_label.setVisible(bool(parts))

    def show_qc_report(self, report) -> None:
        """Patches the artifact QC left out, by reason (None: QC off)."""
        if report is None:
            self.qc_label.setText("<b>Artifact QC:</b> off")
            self.qc_label.setVisible(True)
            return
        reports = report if isinstance(report, list) else [report]
        counts: dict[str, int] = {}
        for r in reports:
            for reason, n in ((r or {}).get("flagged") or {}).items():
                counts[reason] = counts.get(reason, 0) + int(n)
        total = counts.pop("total", sum(counts.values()))
        legend = ", ".join(
            f"<span style='color:{QC_COLOURS.get(k, '#888888')}'>&#9632;</span> {k} {n:,}"
            for k, n in counts.items())
        self.qc_label.setText(f"<b>Artifact QC:</b> {total:,} patches left out"
                              + (f" ({legend})" if total else ""))
        self.qc_label.setVisible(True)

    def show_warnings(self, warnings: list[str]) -> None:
        """The prediction's warnings (also shown as notifications)."""
        if not warnings:
            self.warnings_label.setVisible(False)
            return
        items = "".join(f"<br>&bull; {_escape(w)}" for w in warnings)
        self.warnings_label.setText(f"<b style='color:#e08214'>Warnings:</b>{items}")
        self.warnings_label.setVisible(True)
