"""napari layers of a Prediction: tissue outline, attention maps, top-region boxes.

Pure napari models (no Qt): :func:`build_result_layers` can run in a worker thread,
because a napari layer holds no Qt object until it is added to a viewer. The dock then
inserts the finished layers in one batch (:func:`insert_layers`), so the viewer redraws
once instead of once per layer.

Names are short and grouped ("G-HANet · morphology", "G-HANet · Oncogenesis", ...);
:func:`layer_name` prefixes the slide's name only when several slide layers are open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ghanet.inference import overlays

__all__ = [
    "GROUP",
    "OVERLAY_KEY",
    "SlideGeometry",
    "build_result_layers",
    "LayerBatch",
    "layer_name",
]

#: metadata key marking the plugin's result layers (its value: the layer's kind)
OVERLAY_KEY = "ghanet_overlay"
#: metadata key holding the short label a result layer's name is made from
LABEL_KEY = "ghanet_label"
GROUP = "G-HANet"
RANK_TEXT = {"string": "{rank}", "color": "#00e5ff", "size": 12, "anchor": "upper_left"}


def layer_name(label: str, slide_name: str | None = None) -> str:
    """The name of a result layer: "G-HANet · label", after the slide's name if given.

    Examples
    --------
    >>> layer_name("morphology")
    'G-HANet · morphology'
    >>> layer_name("tissue", "case-7.svs")
    'case-7.svs · G-HANet · tissue'
    """
    base = f"{GROUP} · {label}"
    return f"{slide_name} · {base}" if slide_name else base


def attention_colormap(name: str = "ghanet_attention"):
    """inferno-like ramp with 0 (no patch) fully transparent."""
    from napari.utils import Colormap

    ramp = [
        (0.00, (0.0, 0.0, 0.0, 0.0)),
        (0.01, (0.0, 0.0, 0.0, 0.0)),
        (0.02, (0.09, 0.04, 0.27, 1.0)),
        (0.30, (0.47, 0.11, 0.43, 1.0)),
        (0.60, (0.85, 0.27, 0.23, 1.0)),
        (0.80, (0.98, 0.56, 0.04, 1.0)),
        (1.00, (0.99, 1.0, 0.64, 1.0)),
    ]
    return Colormap(
        colors=[c for _, c in ramp], controls=[v for v, _ in ramp], name=name,
        display_name="G-HANet attention",
    )


def mask_colormap():
    """0 transparent, 1 (the tissue outline) green."""
    from napari.utils import Colormap

    return Colormap(
        colors=[(0, 0, 0, 0), (0.2, 0.95, 0.45, 1.0)], controls=[0.0, 1.0],
        name="ghanet_tissue", display_name="G-HANet tissue outline",
    )


@dataclass(frozen=True)
class SlideGeometry:
    """What the result layers need to know of the slide layer, read in the GUI thread.

    Attributes
    ----------
    scale, translate : (2,) float
        The slide layer's world transform (world units per data pixel, e.g. um).
    shape : (2,) int
        Height and width of the layer's full-resolution data, pixels.
    units : tuple or None
        The layer's world units (e.g. ``("micrometer", "micrometer")``).
    slide_name : str or None
        Prefix of the layer names (None: names without the slide's name).
    """

    scale: tuple[float, float]
    translate: tuple[float, float]
    shape: tuple[int, int]
    units: tuple | None = None
    slide_name: str | None = None

    @classmethod
    def of(cls, layer, slide_name: str | None = None) -> SlideGeometry:
        """Snapshot of ``layer`` (an Image layer, multiscale or not)."""
        data = layer.data[0] if layer.multiscale else layer.data
        units = getattr(layer, "units", None)
        return cls(
            scale=tuple(float(v) for v in layer.scale[-2:]),
            translate=tuple(float(v) for v in layer.translate[-2:]),
            shape=tuple(int(v) for v in data.shape[:2]),  # rgb: (h, w, 3)
            units=tuple(units) if units is not None else None,
            slide_name=slide_name,
        )

    def level0_transform(
        self, dimensions_level0: tuple[int, int]
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """World (scale, translate) of the slide's level-0 pixels ((w, h) given).

        A layer holding a resampled copy of the slide still lines up.
        """
        w0, h0 = dimensions_level0
        scale = np.asarray(self.scale) * np.asarray(self.shape, float) / np.array([h0, w0], float)
        return (float(scale[0]), float(scale[1])), self.translate


def build_result_layers(prediction, geometry: SlideGeometry) -> list[tuple[str, Any]]:
    """The result layers of ``prediction`` over the slide, as (key, layer) in display order.

    Keys: "tissue" (outline, hidden), "morphology", "genome:{i}" (one per category,
    hidden) and "regions" (top-k boxes with rank labels, when there are regions).
    Attention maps hold one pixel per patch-lattice cell; 0 (no patch) is transparent.
    """
    from napari.layers import Image, Shapes

    p = prediction
    prefix = geometry.slide_name
    level0_scale, level0_translate = geometry.level0_transform(p.slide["dimensions_level0"])
    lattice = overlays.patch_lattice(p.coords, p.patch_size_level0, p.step_level0)
    grid_scale, grid_translate = overlays.lattice_transform(lattice, level0_scale, level0_translate)
    mask_scale, mask_translate = overlays.mask_transform(
        p.tissue_downsample, level0_scale, level0_translate
    )
    common: dict[str, Any] = {"units": geometry.units} if geometry.units is not None else {}
    attention = {
        "scale": grid_scale, "translate": grid_translate, "colormap": attention_colormap(),
        "contrast_limits": (0.0, 1.0), "opacity": 0.55, "blending": "translucent",
        "interpolation2d": "nearest", **common,
    }

    def meta(kind: str, label: str, **extra) -> dict[str, Any]:
        return {"name": layer_name(label, prefix),
                "metadata": {OVERLAY_KEY: kind, LABEL_KEY: label, **extra}}

    layers: list[tuple[str, Any]] = [
        ("tissue", Image(
            overlays.mask_outline(p.tissue_mask, width=2), scale=mask_scale,
            translate=mask_translate, colormap=mask_colormap(), contrast_limits=(0, 1),
            opacity=0.9, blending="translucent", interpolation2d="nearest", visible=False,
            **meta("tissue", "tissue"), **common)),
        ("morphology", Image(overlays.attention_image(p.morphology_attention, lattice),
                             **meta("morphology", "morphology"), **attention)),
    ]
    for i, name in enumerate(p.category_names):
        layers.append((f"genome:{i}", Image(
            overlays.attention_image(p.genome_attention[i], lattice), visible=False,
            **meta("genome", name, category=name, category_index=i), **attention)))
    if p.top_regions:
        xywh = np.array([[r.x, r.y, r.width, r.height] for r in p.top_regions])
        layers.append(("regions", Shapes(
            overlays.region_rectangles(xywh, level0_scale, level0_translate),
            shape_type="rectangle", edge_color="#00e5ff", face_color="transparent",
            edge_width=0.04 * p.patch_size_level0 * level0_scale[0],
            properties={"rank": np.array([r.rank for r in p.top_regions]),
                        "category": np.array([r.category for r in p.top_regions])},
            text=dict(RANK_TEXT), **meta("regions", "top regions"), **common)))
    return layers


def rename_result_layers(layers, slide_name: str | None) -> None:
    """Give result layers their grouped names again (e.g. when a second slide opens)."""
    for layer in layers:
        label = layer.metadata.get(LABEL_KEY)
        if label is not None:
            name = layer_name(label, slide_name)
            if layer.name != name:
                layer.name = name


class LayerBatch:
    """Result layers inserted into a viewer as one batch that appears at once.

    Each layer goes in hidden (a hidden layer is not drawn), so whatever the event loop
    draws between insertions is only what was there before; :meth:`reveal` then shows the
    layers meant to be visible in one step: one redraw for the whole batch. The dock
    inserts a few layers per turn of the event loop (:meth:`insert_some`) so that napari's
    per-layer set-up (visual, controls) never blocks the viewer for long.

    Parameters
    ----------
    viewer : napari.Viewer
    layers : list of (key, layer)
        As :func:`build_result_layers` returns them.
    active : Layer, optional
        The layer to select again at the end (e.g. the slide).
    """

    def __init__(self, viewer, layers: list[tuple[str, Any]], active=None) -> None:
        self.viewer = viewer
        self._todo = list(layers)
        self._visible = {id(layer): layer.visible for _, layer in layers}
        self.inserted: dict[str, Any] = {}
        self.active = active

    @property
    def done(self) -> bool:
        """True when every layer is in the viewer."""
        return not self._todo

    def insert_some(self, budget_s: float = 0.04) -> bool:
        """Insert layers (at least one) until ``budget_s`` seconds have passed; returns
        :attr:`done`."""
        start = time.perf_counter()
        selection = self.viewer.layers.selection
        selected, active = set(selection), selection.active
        # napari makes each new layer the selected one (switching the layer controls,
        # tens of ms each): keep the selection as it was, without an event
        with selection.events.blocker_all():
            try:
                while self._todo:
                    key, layer = self._todo.pop(0)
                    layer.visible = False
                    self.viewer.layers.append(layer)
                    self.inserted[key] = layer
                    if time.perf_counter() - start >= budget_s:
                        break
            finally:
                selection.clear()
                selection.update(selected)
                selection.active = active
        return self.done

    def reveal(self) -> None:
        """Show the layers meant to be visible and select ``active`` again."""
        for layer in self.inserted.values():
            if self._visible.get(id(layer)):
                layer.visible = True
        if self.active is not None and self.active in self.viewer.layers:
            self.viewer.layers.selection.active = self.active

    def remove(self) -> None:
        """Take the inserted layers out of the viewer again."""
        for layer in self.inserted.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.inserted = {}
        self._todo = []
