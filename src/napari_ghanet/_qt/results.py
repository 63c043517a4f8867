"""The results panel: risk, survival curve, pathway profile and top-attention regions.

:meth:`ResultsPanel.show_prediction` fills every part from a Prediction, :meth:`clear`
empties it; the panel only displays numbers. It tells the dock what the user picks
through signals: ``category_selected`` (genome-attention category index or None) and
``region_activated`` (row of a top region). :meth:`add_section` appends more widgets
(exports, later QC or ROI summaries) below the regions table.
"""

from __future__ import annotations

from qtpy.QtCore import QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFont, QPainter
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHeaderView,
    QLabel,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ResultsPanel", "ordinal"]

from napari_ghanet._qt.distribution import DistributionBadge
from napari_ghanet._qt.result_notes import ResultNotes
from napari_ghanet._qt.survival_plot import SurvivalPlot
from napari_ghanet.models.risk import risk_colour, risk_text

BAR_ROLE = Qt.ItemDataRole.UserRole + 1


def ordinal(value: float) -> str:
    """1 -> "1st", 52.6 -> "53rd", 11 -> "11th"."""
    n = int(round(value))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class DivergingBarDelegate(QStyledItemDelegate):
    """Draws a z-score (item data ``BAR_ROLE``) as a bar left (blue) or right (red) of
    the cohort mean, with its value."""

    def __init__(self, parent=None, limit: float = 2.0):
        super().__init__(parent)
        self.limit = limit

    def paint(self, painter: QPainter, option, index) -> None:
        value = index.data(BAR_ROLE)
        if value is None:
            super().paint(painter, option, index)
            return
        painter.save()
        rect = option.rect.adjusted(2, 3, -40, -3)
        mid = rect.left() + rect.width() / 2
        frac = max(-1.0, min(1.0, float(value) / self.limit))
        width = frac * rect.width() / 2
        colour = QColor("#c62828") if value >= 0 else QColor("#1565c0")
        painter.fillRect(QRectF(min(mid, mid + width), rect.top(), abs(width), rect.height()),
                         colour)
        painter.setPen(option.palette.text().color())
        painter.drawLine(int(mid), rect.top(), int(mid), rect.bottom())
        text_rect = option.rect.adjusted(option.rect.width() - 38, 0, 0, 0)
        painter.drawText(
            text_rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            f"{value:+.2f}",
        )
        painter.restore()


class _FitRows:
    """Mixin of a tree or table view as tall as its header and rows, without a scroll
    area of its own (the dock scrolls as a whole); wrapped text makes rows taller when
    the dock is narrow, so the height follows the width."""

    def _setup_fit(self) -> None:
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWordWrap(True)
        self.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.fit()

    def rows_height(self) -> int:  # pragma: no cover - defined by the views
        raise NotImplementedError

    def fit(self) -> None:
        """Set the height that shows every row."""
        height = self.rows_height()
        if height != self.height() or self.minimumHeight() != height:
            self.setFixedHeight(height)
            # the panels above (up to the dock's scroll area) grow or shrink with it
            parent = self.parentWidget()
            while parent is not None:
                if parent.layout() is not None:
                    parent.layout().invalidate()
                parent.updateGeometry()
                parent = parent.parentWidget()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            QTimer.singleShot(0, self._relayout)

    def _relayout(self) -> None:
        self.doItemsLayout()  # row heights of the wrapped text at the new width
        self.fit()


class WrapDelegate(QStyledItemDelegate):
    """Rows as tall as their text wrapped at the column's width (a tree view does not
    grow a row for wrapped text by itself)."""

    def sizeHint(self, option, index):  # noqa: N802 - Qt API
        hint = super().sizeHint(option, index)
        view = self.parent()
        text = index.data(Qt.ItemDataRole.DisplayRole)
        if not text or not isinstance(view, QTreeWidget):
            return hint
        depth, parent = 0, index.parent()
        while parent.isValid():
            depth, parent = depth + 1, parent.parent()
        width = view.header().sectionSize(index.column()) - view.indentation() * (depth + 1) - 8
        rect = option.fontMetrics.boundingRect(
            0, 0, max(width, 40), 100_000, int(Qt.TextFlag.TextWordWrap.value), str(text))
        hint.setHeight(max(hint.height(), rect.height() + 6))
        return hint


class FitTree(_FitRows, QTreeWidget):
    """A tree as tall as its visible rows (expanding an item makes it taller)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setUniformRowHeights(False)
        self.itemExpanded.connect(lambda _item: self.fit())
        self.itemCollapsed.connect(lambda _item: self.fit())
        self._setup_fit()

    def rows_height(self) -> int:
        """Pixels of the header and every visible row."""
        height = self.header().sizeHint().height() + 2 * self.frameWidth() + 2
        for i in range(self.topLevelItemCount()):
            item = self.topLevelItem(i)
            height += self.indexRowSizeHint(self.indexFromItem(item))
            if item.isExpanded():
                height += sum(self.indexRowSizeHint(self.indexFromItem(item.child(c)))
                              for c in range(item.childCount()))
        return height


class FitTable(_FitRows, QTableWidget):
    """A table as tall as all its rows (rows as tall as their wrapped text)."""

    def __init__(self, rows: int, columns: int, parent=None) -> None:
        super().__init__(rows, columns, parent)
        self._setup_fit()

    def rows_height(self) -> int:
        """Pixels of the header and every row."""
        self.resizeRowsToContents()
        header = self.horizontalHeader()
        return (header.sizeHint().height() if header.isVisible() or not self.isVisible() else 0) \
            + sum(self.rowHeight(r) for r in range(self.rowCount())) + 2 * self.frameWidth() + 2


class ResultsPanel(QWidget):
    """Risk, survival plot, pathway tree and regions table of one Prediction."""

    category_selected = Signal(object)  # int category index, or None for "none"
    region_activated = Signal(int)  # row of the top-regions table (0-based)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.risk_label = _wrapped("")
        font = QFont(self.risk_label.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.risk_label.setFont(font)
        layout.addWidget(self.risk_label)
        self.distribution_badge = DistributionBadge()  # is the slide like the training's?
        layout.addWidget(self.distribution_badge)
        self.risk_detail = _wrapped("")
        layout.addWidget(self.risk_detail)

        self.survival = SurvivalPlot()
        self.survival_figure = self.survival.figure
        self.survival_canvas = self.survival.canvas
        self.horizon_label = self.survival.horizon_label
        layout.addWidget(_wrapped("<b>Predicted survival</b>"))
        layout.addWidget(self.survival_canvas)
        layout.addWidget(self.horizon_label)
        self.notes = ResultNotes()  # slides, regions, QC, warnings
        for label in self.notes.labels():
            layout.addWidget(label)
        (self.slides_label, self.regions_label, self.qc_label,
         self.warnings_label) = self.notes.labels()

        layout.addWidget(_wrapped(
            "<b>Reconstructed pathway profile</b> (mean z-score vs. the training cohort; "
            "expand for the top genes)"))
        self.pathway_tree = tree = FitTree()
        tree.setColumnCount(2)
        tree.setHeaderLabels(["Category (genes) / gene", "vs. cohort"])
        tree.setItemDelegateForColumn(0, WrapDelegate(tree))
        tree.setItemDelegateForColumn(1, DivergingBarDelegate(tree))
        tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        tree.header().resizeSection(1, 112)
        tree.header().setStretchLastSection(False)
        # full names, wrapped when the dock is narrow; the tree is as tall as its rows
        layout.addWidget(tree)

        layout.addWidget(_wrapped("Genome attention layer"))
        self.category_combo = QComboBox()
        self.category_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.category_combo.setMinimumContentsLength(12)
        self.category_combo.setToolTip("Which category's genome-informed attention to show")
        self.category_combo.currentIndexChanged.connect(
            lambda i: self.category_selected.emit(i - 1 if i > 0 else None))
        layout.addWidget(self.category_combo)

        layout.addWidget(_wrapped("<b>Top attention regions</b> (click to go there)"))
        self.regions_table = table = FitTable(0, 3)
        table.setHorizontalHeaderLabels(["Rank", "Attention (pct.)", "Category"])
        table.verticalHeader().setVisible(False)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        # every top-k row shown (no scroll area of its own), full category names wrapped
        table.cellClicked.connect(lambda row, _col: self.region_activated.emit(row))
        layout.addWidget(table)
        self._sections = layout

    def add_section(self, widget: QWidget) -> None:
        """Append ``widget`` at the bottom of the panel."""
        self._sections.addWidget(widget)

    # ------------------------------------------------------------------ filling

    def show_prediction(self, p) -> None:
        """Fill the panel from Prediction ``p`` (numbers, plot, tree, table) and show it."""
        colour = risk_colour(p.risk_group)
        self.risk_label.setText(
            f"<span style='color:{colour}'>{risk_text(p.risk_group)}</span>"
            f" &middot; {ordinal(p.percentile)} percentile"
        )
        self.risk_label.setToolTip(risk_text(p.risk_group, p.percentile) + "; risk groups "
                                   "are the training cohort's risk tertiles")
        self.risk_detail.setText(
            f"Risk score {p.risk:.3f} (higher = worse), {ordinal(p.percentile)} percentile "
            f"of the model's training cohort. {p.n_patches:,} patches of "
            f"{p.settings.get('patch_px')} px at {p.settings.get('target_mpp'):g} um/px."
        )
        self.distribution_badge.show_report(getattr(p, "distribution", None))
        self.plot_survival(p)
        self.fill_pathways(p)
        self.category_combo.blockSignals(True)
        self.category_combo.clear()
        self.category_combo.addItems(["none"] + list(p.category_names))
        self.category_combo.setCurrentIndex(0)
        self.category_combo.blockSignals(False)
        self.fill_regions(p)
        self.notes.show(p)
        self.setVisible(True)

    def show_slides(self, p) -> None:
        """The slides of a several-slide (patient) prediction and their patches."""
        self.notes.show_slides(p)

    def show_regions_report(self, report) -> None:
        """Regions used (count, mm^2) and the patches they removed (None: no regions)."""
        self.notes.show_regions_report(report)

    def show_qc_report(self, report) -> None:
        """Patches the artifact QC left out, by reason (None: QC off)."""
        self.notes.show_qc_report(report)

    def show_warnings(self, warnings: list[str]) -> None:
        """The prediction's warnings (also shown as notifications)."""
        self.notes.show_warnings(warnings)

    def clear(self) -> None:
        """Empty and hide the panel."""
        self.distribution_badge.clear()
        self.pathway_tree.clear()
        self.pathway_tree.fit()
        self.regions_table.setRowCount(0)
        self.regions_table.fit()
        self.category_combo.blockSignals(True)
        self.category_combo.clear()
        self.category_combo.blockSignals(False)
        self.setVisible(False)

    def select_category(self, index: int | None) -> None:
        """Show category ``index`` (None: "none") in the combo box, without a signal."""
        self.category_combo.blockSignals(True)
        self.category_combo.setCurrentIndex(0 if index is None else index + 1)
        self.category_combo.blockSignals(False)

    def plot_survival(self, p) -> None:
        """Step plot of the predicted survival curve, in the viewer's theme colours."""
        self.survival.plot(p, self.palette().color(self.backgroundRole()).name(),
                           self.palette().color(self.foregroundRole()).name())

    def fill_pathways(self, p) -> None:
        """One row per category (mean z-score bar), its top genes as children."""
        tree = self.pathway_tree
        tree.clear()
        delegate = tree.itemDelegateForColumn(1)
        if isinstance(delegate, DivergingBarDelegate):
            limit = max((abs(c.score) for c in p.categories), default=1.0)
            gene_max = max((abs(z) for c in p.categories for _, z in c.top_genes), default=1.0)
            delegate.limit = max(limit, gene_max, 1.0)
        for c in p.categories:
            item = QTreeWidgetItem([f"{c.name} ({len(c.genes)})", ""])
            item.setData(1, BAR_ROLE, float(c.score))
            item.setToolTip(0, f"{c.name} ({len(c.genes)} genes): mean reconstructed "
                               f"z-score {c.score:+.3f}")
            for gene, z in c.top_genes:
                child = QTreeWidgetItem([gene, ""])
                child.setData(1, BAR_ROLE, float(z))
                item.addChild(child)
            tree.addTopLevelItem(item)
        tree.fit()

    def fill_regions(self, p) -> None:
        """One row per top-attention region: rank, attention (percentile), category."""
        table = self.regions_table
        table.setRowCount(len(p.top_regions))
        for row, r in enumerate(p.top_regions):
            cells = [str(r.rank), f"{r.attention:.4f} ({r.percentile:.0f})", r.category]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"x={r.x}, y={r.y}, {r.width} x {r.height} px (level 0); "
                                f"{r.category}")
                table.setItem(row, col, item)
        table.fit()
