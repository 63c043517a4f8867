"""The dock's model and device choice over a
:class:`~napari_ghanet.inference.session.PredictionSession`: the bundle is the session's
(loaded once per file), the model panel and the intended-use label listen to the
session's ``bundle`` event; the last model file and the device are remembered in the
settings store."""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QFrame, QLabel

from napari_ghanet._qt.notify import notify
from napari_ghanet.errors import GHANetError

__all__ = ["ModelControl", "intended_use_label"]


def intended_use_label() -> QLabel:
    """The framed label that states the model's intended use."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setFrameShape(QFrame.Shape.StyledPanel)
    label.setStyleSheet(
        "QLabel { border: 1px solid #b26a00; border-radius: 3px; padding: 4px; }")
    return label


class ModelControl:
    """Load models into ``session`` and show them in ``inputs`` / ``settings`` /
    ``label``; remember the device and the last model in ``store``."""

    def __init__(self, session, inputs, settings, label: QLabel, store) -> None:
        self.session, self.inputs, self.settings = session, inputs, settings
        self.label, self.store = label, store
        session.events.bundle.connect(self._show_bundle)

    def _show_bundle(self, bundle) -> None:
        self.inputs.show_bundle(bundle)
        self.show_intended_use(bundle.intended_use if bundle is not None else None)
        if bundle is not None:
            self.settings.use_model(bundle.encoder)

    def show_intended_use(self, text: str | None) -> None:
        self.label.setText(f"<b>Intended use:</b> {text}" if text else "")
        self.label.setVisible(bool(text))

    def restore_device(self) -> None:
        """The device chosen in an earlier session (when this machine offers it); every
        later choice is remembered."""
        combo = self.inputs.device_combo
        device = self.store.load().get("device", "auto")
        i = combo.findText(device)
        item = combo.model().item(i) if i >= 0 else None
        if item is not None and item.isEnabled():
            combo.setCurrentIndex(i)
        combo.currentTextChanged.connect(lambda text: self.store.save({"device": text}))

    def reset(self) -> None:
        """"Reset to defaults" also brings the device back to auto."""
        self.inputs.device_combo.setCurrentText("auto")
        self.store.reset()

    def load_default(self) -> None:
        """The last model loaded from a file in an earlier session, else the bundled
        demonstration model."""
        from napari_ghanet.models.bundle import demo_bundle_path

        last = self.store.load().get("last_model", "")
        if last and Path(last).is_file() and self.load(last, quiet=True):
            return
        path = demo_bundle_path()
        if path.is_file():
            self.load(path, quiet=True)
        else:
            self.session.choose_bundle(None)

    def choose(self, parent) -> None:
        path, _ = QFileDialog.getOpenFileName(
            parent, "Load a G-HANet model bundle", "", "Model bundles (*.safetensors)")
        if path:
            self.load(path)

    def load(self, path: str | os.PathLike, quiet: bool = False) -> bool:
        """Choose the ``.safetensors`` bundle ``path`` in the session (not loaded again
        when it is the file already chosen); errors become a notification."""
        from napari_ghanet.models.bundle import demo_bundle_path

        try:
            bundle = self.session.choose_bundle(path)
        except (GHANetError, OSError, ValueError, RuntimeError) as e:
            notify("error", f"Cannot load the model: {e}")
            return False
        if not quiet:
            notify("info", f"Model {bundle.name!r} loaded")
        is_demo = Path(path).resolve() == demo_bundle_path().resolve()
        self.store.save({"last_model": "" if is_demo else str(Path(path).resolve())})
        return True
