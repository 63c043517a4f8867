"""napari layers of a Prediction: tissue outline, attention maps, top-region boxes.

Pure napari models (no Qt): :func:`build_result_layers` can run in a worker thread,
because a napari layer holds no Qt object until it is added to a viewer. The dock then
inserts the finished layers in one batch (:class:`LayerBatch`), so the viewer redraws
once instead of once per layer.

Names are short and grouped ("G-HANet · morphology", "G-HANet · Oncogenesis", ...);
:func:`layer_name` prefixes the slide's name only when several slide layers are open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ghanet._qt.distribution import unlike_layer
from napari_ghanet._qt.gc_hold import GCHold
from napari_ghanet.inference import overlays

__all__ = [
    "GROUP",
    "OVERLAY_KEY",
    "SlideGeometry",
    "QC_COLOURS",
    "build_result_layers",
    "LayerBatch",
    "heatmap_display",
    "layer_name",
    "qc_points",
    "show_genome_category",
    "slide_key",
]

#: metadata key marking the plugin's result layers (its value: the layer's kind)
OVERLAY_KEY = "ghanet_overlay"
#: metadata key holding the short label a result layer's name is made from
LABEL_KEY = "ghanet_label"
GROUP = "G-HANet"
#: top-region boxes: cyan edge; the focused one (after "go there") black and twice as
#: thick, which stands out on the pale top-attention colours, the white background and
#: the pink stain alike (a white one vanished on the first two)
BOX_EDGE, FOCUS_EDGE = "#00e5ff", "#000000"
#: rank labels: white digits centred on a dark badge with a white edge, in the box's
#: upper-left corner (inside the box, legible on the pale attention colours and on H&E)
RANK_TEXT = {"string": "{label}", "color": "#ffffff", "size": 11, "anchor": "center"}
BADGE_FACE, BADGE_EDGE = "#000000cc", "#ffffff"
#: the badge's side and its inset from the box's corner, as fractions of the box's side
BADGE_SIDE, BADGE_INSET = 0.3, 0.06


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


#: colour of each QC reason (the QC layer's legend: features "reason", and the panel)
QC_COLOURS = {"pen": "#2962ff", "blur": "#ffd600", "fold": "#d500f9"}


def slide_key(base: str, slide: int = 0) -> str:
    """Key of a result layer in :attr:`PrognosisWidget.result_layers`: ``base`` for the
    first slide, ``base@k`` for slide ``k`` of a several-slide prediction.

    Examples
    --------
    >>> slide_key("morphology"), slide_key("morphology", 2)
    ('morphology', 'morphology@2')
    """
    return base if slide == 0 else f"{base}@{slide}"


def heatmap_display(heatmap, level0_scale=(1.0, 1.0), level0_translate=(0.0, 0.0)):
    """An overlapping-stride :class:`~napari_ghanet.inference.heatmap.Heatmap` ready for
    an Image layer: (image, scale, translate).

    The image holds each cell's percentile rank among the covered cells in (0.02, 1]; cells
    no patch covers (NaN) become 0, which the attention colormap leaves transparent. The
    transform is made from the heatmap's own ``origin`` and ``cell_level0`` (level-0
    pixels) and the slide layer's level-0 transform, cell (r, c) centred on the middle of
    the level-0 area it covers.

    Examples
    --------
    >>> from napari_ghanet.inference.heatmap import overlap_heatmap
    >>> hm = overlap_heatmap(np.array([[0, 0], [128, 0], [256, 0]]), 256,
    ...                      np.array([0.0, 1.0, 2.0]), overlap=0.5)
    >>> image, scale, translate = heatmap_display(hm, (0.5, 0.5))
    >>> image.shape, scale, translate
    ((2, 4), (64.0, 64.0), (31.75, 31.75))
    >>> float(image.min()) > 0
    True
    """
    raw = np.asarray(heatmap.image, np.float64)
    image = np.zeros(raw.shape, np.float32)
    finite = np.isfinite(raw)
    if finite.any():
        image[finite] = 0.02 + 0.98 * overlays.percentile_normalise(raw[finite])
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    cell = float(heatmap.cell_level0)
    ox, oy = (float(v) for v in heatmap.origin)
    half = cell / 2.0 - 0.5
    return image, (cell * sy, cell * sx), (ty + (oy + half) * sy, tx + (ox + half) * sx)


def slide_heatmaps(prediction, slide: int) -> dict:
    """The overlapping-stride heatmaps of slide ``slide`` ({} when there are none)."""
    by_slide = getattr(prediction, "heatmaps_by_slide", None) or []
    if slide < len(by_slide) and by_slide[slide]:
        return dict(by_slide[slide])
    if slide == 0:
        return dict(getattr(prediction, "heatmaps", None) or {})
    return {}


def qc_points(coords, reasons, patch_size_level0, level0_scale=(1.0, 1.0),
              level0_translate=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, float]:
    """Flagged patches as napari points: (M, 2) world (row, col) centres, (M,) reasons and
    the point size (the patch side in world units).

    Examples
    --------
    >>> pts, why, size = qc_points([[0, 0], [512, 256]], ["pen", "blur"], 256, (0.5, 0.5))
    >>> pts.tolist(), why.tolist(), size
    ([[63.75, 63.75], [191.75, 319.75]], ['pen', 'blur'], 128.0)
    """
    xy = np.asarray(coords, np.float64).reshape(-1, 2)
    reasons = np.asarray(reasons, dtype=str).reshape(-1)
    sy, sx = (float(v) for v in level0_scale)
    ty, tx = (float(v) for v in level0_translate)
    size = float(patch_size_level0)
    rows = ty + (xy[:, 1] + size / 2 - 0.5) * sy
    cols = tx + (xy[:, 0] + size / 2 - 0.5) * sx
    return np.stack([rows, cols], axis=1), reasons, size * sy


def qc_colours(reasons) -> np.ndarray:
    """RGBA float (M, 4) of each flagged patch's reason (:data:`QC_COLOURS`; white for an
    unknown reason), one colour per distinct reason looked up, so a slide with thousands
    of flagged patches costs no per-point colour parsing.

    Examples
    --------
    >>> qc_colours(["pen", "blur", "pen", "?"])[:, :3].round(3).tolist()
    [[0.161, 0.384, 1.0], [1.0, 0.839, 0.0], [0.161, 0.384, 1.0], [1.0, 1.0, 1.0]]
    """
    reasons = np.asarray(reasons, dtype=str).reshape(-1)
    kinds, which = np.unique(reasons, return_inverse=True)
    palette = np.array([_rgba(QC_COLOURS.get(str(k), "#ffffff")) for k in kinds])
    return palette.reshape(-1, 4)[which.reshape(-1)]


def qc_layer(points: np.ndarray, reasons: np.ndarray, size: float, **kwargs):
    """One Points layer of flagged patches (hollow squares), coloured by reason; the
    reason of each point is in ``layer.features["reason"]``."""
    from napari.layers import Points

    return Points(
        points, symbol="square", size=size, face_color="transparent",
        border_color=qc_colours(reasons) if len(reasons) else "#ffffff", border_width=0.08,
        border_width_is_relative=True, features={"reason": reasons}, opacity=0.9,
        **kwargs,
    )


def build_result_layers(prediction, geometry) -> list[tuple[str, Any]]:
    """The result layers of ``prediction`` over the slide(s), as (key, layer) in display
    order.

    ``geometry`` is the slide layer's :class:`SlideGeometry`, or one per slide of a
    several-slide prediction (None for a slide without a layer: no layers for it). Per
    slide (keys from :func:`slide_key`): "tissue" (outline, hidden), "morphology",
    "genome" (one layer, hidden, showing the category picked in the dock; every
    category's image is in its ``metadata["ghanet_images"]``), "unlike" (how unlike the
    training patches each patch is, hidden, when the distribution check ran), "qc" (flagged patches, when
    QC flagged some) and "regions" (top-k boxes with rank labels, when there are regions).
    Attention maps hold one pixel per patch-lattice cell, or the overlapping-stride
    heatmap's cells when the prediction has heatmaps; 0 (no patch) is transparent.
    """
    geometries = list(geometry) if isinstance(geometry, list | tuple) else [geometry]
    layers: list[tuple[str, Any]] = []
    for k, geom in enumerate(geometries[: prediction.n_slides]):
        if geom is not None:
            layers.extend(_slide_layers(prediction, k, geom))
    return layers


def _slide_layers(p, k: int, geometry: SlideGeometry) -> list[tuple[str, Any]]:
    from napari.layers import Image, Shapes

    prefix = geometry.slide_name
    info = p.slides[k] if k < len(p.slides) else p.slide
    dims = info.get("dimensions_level0") or p.slide["dimensions_level0"]
    size0 = int(info.get("patch_size_level0", p.patch_size_level0))
    step0 = int(info.get("step_level0", p.step_level0 if k == 0 else size0))
    level0_scale, level0_translate = geometry.level0_transform(dims)
    coords, morph, genome = p.slide_attention(k)
    lattice = overlays.patch_lattice(coords, size0, step0)
    grid_scale, grid_translate = overlays.lattice_transform(lattice, level0_scale, level0_translate)
    mask = p.tissue_masks[k] if k < len(p.tissue_masks) else p.tissue_mask
    downsample = (info.get("tissue") or {}).get("downsample") if k else None
    mask_scale, mask_translate = overlays.mask_transform(
        float(downsample or p.tissue_downsample), level0_scale, level0_translate)
    common: dict[str, Any] = {"units": geometry.units} if geometry.units is not None else {}
    style = {"colormap": attention_colormap(), "contrast_limits": (0.0, 1.0), "opacity": 0.55,
             "blending": "translucent", "interpolation2d": "nearest", **common}
    heatmaps = slide_heatmaps(p, k)

    def attention(label: str, values: np.ndarray) -> tuple[np.ndarray, dict]:
        hm = heatmaps.get(label)
        if hm is not None and np.asarray(hm.image).size:
            image, scale, translate = heatmap_display(hm, level0_scale, level0_translate)
            return image, {"scale": scale, "translate": translate, **style}
        return (overlays.attention_image(values, lattice),
                {"scale": grid_scale, "translate": grid_translate, **style})

    def meta(kind: str, label: str, **extra) -> dict[str, Any]:
        return {"name": layer_name(label, prefix),
                "metadata": {OVERLAY_KEY: kind, LABEL_KEY: label, "ghanet_slide": k, **extra}}

    morph_image, morph_kw = attention("morphology", morph)
    layers: list[tuple[str, Any]] = [
        (slide_key("tissue", k), Image(
            overlays.mask_outline(mask, width=2), scale=mask_scale,
            translate=mask_translate, colormap=mask_colormap(), contrast_limits=(0, 1),
            opacity=0.9, blending="translucent", interpolation2d="nearest", visible=False,
            **meta("tissue", "tissue"), **common)),
        (slide_key("morphology", k), Image(morph_image, **meta("morphology", "morphology"),
                                          **morph_kw)),
    ]
    unlike = unlike_layer(p, k, lattice, {"scale": grid_scale, "translate": grid_translate,
                                          **style, **meta("unlike", "unlike training")})
    if unlike is not None:  # per patch: how unlike the training patches (hidden)
        layers.append((slide_key("unlike", k), unlike))
    if p.category_names:
        made = [attention(name, genome[i]) for i, name in enumerate(p.category_names)]
        images = [image for image, _ in made]
        layers.append((slide_key("genome", k), Image(
            images[0], visible=False, **made[0][1],
            **meta("genome", "genome attention", category=None, ghanet_images=images))))
    qc_coords = getattr(p, "qc_coords", None)
    if qc_coords is not None and len(qc_coords):
        which = np.asarray(getattr(p, "qc_slide_index", None)
                           if getattr(p, "qc_slide_index", None) is not None
                           else np.zeros(len(qc_coords), np.int64))
        sel = which == k
        if sel.any():
            pts, why, size = qc_points(np.asarray(qc_coords)[sel],
                                       np.asarray(p.qc_reasons)[sel], size0,
                                       level0_scale, level0_translate)
            layers.append((slide_key("qc", k), qc_layer(pts, why, size, **meta("qc", "QC"),
                                                        **common)))
    regions = [r for r in p.top_regions if getattr(r, "slide", 0) == k]
    if regions:
        layers.append((slide_key("regions", k), Shapes(
            **region_shapes(regions, level0_scale, level0_translate),
            **meta("regions", "top regions"), **common)))
    return layers


def region_shapes(regions, level0_scale=(1.0, 1.0), level0_translate=(0.0, 0.0)) -> dict:
    """Keyword arguments of the top-regions Shapes layer: one box per region (shapes
    ``0..K-1``, in rank order) and then one rank badge per region (shapes ``K..2K-1``), a
    dark square inside the box's upper-left corner carrying the rank, so that no label
    lands above its box (where, in a vertical stack, it would sit inside the box above).

    Parameters
    ----------
    regions : list of Region
        Level-0 pixel boxes (``x``, ``y``, ``width``, ``height``) with ``rank`` and
        ``category``.
    level0_scale, level0_translate : (2,) float
        The slide layer's level-0 pixel to world transform (world units per pixel).
    """
    k = len(regions)
    xywh = np.array([[r.x, r.y, r.width, r.height] for r in regions], dtype=np.float64)
    side = xywh[:, 2:] * BADGE_SIDE
    badges = np.concatenate([xywh[:, :2] + xywh[:, 2:] * BADGE_INSET, side], axis=1)
    width = 0.04 * float(np.max(xywh[:, 2:])) * float(level0_scale[0])
    ranks = np.array([r.rank for r in regions])
    return {
        "data": overlays.region_rectangles(np.concatenate([xywh, badges]),
                                           level0_scale, level0_translate),
        "shape_type": "rectangle",
        "edge_color": [BOX_EDGE] * k + [BADGE_EDGE] * k,
        "face_color": ["transparent"] * k + [BADGE_FACE] * k,
        "edge_width": [width] * k + [0.5 * width] * k,
        "properties": {"rank": np.concatenate([ranks, ranks]),
                       "category": np.array([r.category for r in regions] * 2),
                       "label": np.array([""] * k + [str(v) for v in ranks])},
        "text": dict(RANK_TEXT),
        "opacity": 1.0,  # the badges and digits at full contrast (boxes have no face)
    }


def focus_region(layer, rank: int) -> None:
    """Draw region ``rank``'s box of the top-regions layer ``layer`` in the focus colour
    (thicker) and the others as usual; select it."""
    ranks = list(layer.properties.get("rank", []))
    labels = list(layer.properties.get("label", [""] * len(ranks)))
    boxes = [i for i, label in enumerate(labels) if label == ""]
    badges = [i for i, label in enumerate(labels) if label != ""]
    if not boxes or not badges:
        return
    base = 2.0 * float(layer.edge_width[badges[0]])  # the badges keep half the box edge
    colours = np.array(layer.edge_color)
    widths = list(layer.edge_width)
    focused = None
    for i in boxes:
        on = ranks[i] == rank
        colours[i] = _rgba(FOCUS_EDGE if on else BOX_EDGE)
        widths[i] = 2.0 * base if on else base
        if on:
            focused = i
    layer.edge_color = colours
    layer.edge_width = widths
    if focused is not None:
        layer.selected_data = {focused}


def _rgba(hex_colour: str) -> np.ndarray:
    """RGBA floats (4,) of ``#rrggbb`` or ``#rrggbbaa``."""
    h = hex_colour.lstrip("#")
    h = h + "ff" if len(h) == 6 else h
    return np.array([int(h[i:i + 2], 16) / 255.0 for i in range(0, 8, 2)])


def show_genome_category(layer, index: int | None, names: list[str]) -> None:
    """Show category ``index`` (None: hide) on a "genome" result layer, named after it."""
    images = layer.metadata.get("ghanet_images") or []
    if index is None or not 0 <= index < len(images):
        layer.visible = False
        return
    if layer.metadata.get("category") != names[index]:
        layer.data = images[index]
        layer.metadata["category"] = names[index]
        layer.metadata["category_index"] = index
        layer.metadata[LABEL_KEY] = names[index]
        slide_name = layer.name.rsplit(f"{GROUP} · ", 1)[0].removesuffix(" · ") or None
        layer.name = layer_name(names[index], slide_name)
    layer.visible = True


def rename_result_layers(layers, slide_name: str | None) -> None:
    """Give result layers their grouped names again (e.g. when a second slide opens)."""
    for layer in layers:
        label = layer.metadata.get(LABEL_KEY)
        if label is not None:
            name = layer_name(label, slide_name)
            if layer.name != name:
                layer.name = name


def _text_strings(layer) -> np.ndarray:
    """The distinct non-empty labels a layer's visible text draws (str (K,); none for a
    layer without text, e.g. an Image or a Points layer with no text set)."""
    text = getattr(layer, "text", None)
    if text is None or not getattr(text, "visible", False):
        return np.zeros(0, str)
    values = np.unique(np.asarray(getattr(text, "values", ()), dtype=str).reshape(-1))
    return values[values != ""]


class LayerBatch:
    """Result layers inserted into a viewer as one batch that appears at once.

    Each layer goes in hidden (a hidden layer is not drawn), so whatever the event loop
    draws between insertions is only what was there before; :meth:`reveal` then shows the
    layers meant to be visible in one step: one redraw for the whole batch. The dock
    inserts a few layers per turn of the event loop (:meth:`insert_some`) so that napari's
    per-layer set-up (visual, controls) never blocks the viewer for long, then shows the
    layers one per turn, a layer's text one turn after its shapes (:meth:`reveal_next`),
    each first draw compiling its own shaders in its own frame (the text's first draw also
    renders the rank labels' glyphs, about 20 at 3-6 ms each on the CPU: napari's font
    atlas is not public, so they are not rendered ahead).

    The work per turn does not grow with the slide: the attention, genome and tissue
    layers are images of one pixel per patch cell (per mask pixel), the QC layer one
    point per flagged patch with its colours given as one array, the regions layer the
    top-k boxes.

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
        self._gc = GCHold()  # no full collection while the layers go in
        self._text_later: dict[int, Any] = {}  # layers whose text shows one turn later

    @property
    def done(self) -> bool:
        """True when every layer is in the viewer."""
        return not self._todo

    def insert_some(self, budget_s: float = 0.04) -> bool:
        """Insert layers (at least one) until ``budget_s`` seconds have passed; returns
        :attr:`done`."""
        start = time.perf_counter()
        if not self.inserted and not self._gc.held:
            self._gc.acquire()
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
        while not self.reveal_next():
            pass

    def reveal_next(self) -> bool:
        """Show the next layer meant to be visible, or the text of the layer shown last
        (one per call: a first draw compiles its GL shaders, 60-150 ms on a software
        renderer, so that the dock can spread the first draws over turns of the event
        loop); returns True when all are shown (and ``active`` is selected again)."""
        if self._text_later:
            _, text = self._text_later.popitem()
            text.visible = True
            return self._finish_reveal()
        for layer in self.inserted.values():
            if self._visible.pop(id(layer), False):
                text = getattr(layer, "text", None)
                if _text_strings(layer).size:
                    text.visible = False  # its shapes this turn, its text the next
                    self._text_later[id(layer)] = text
                layer.visible = True
                break
        return self._finish_reveal()

    def _finish_reveal(self) -> bool:
        """True (and ``active`` selected again, the GC freeze released) when every layer
        and text meant to be visible is shown."""
        if self._text_later or any(self._visible.get(id(layer))
                                   for layer in self.inserted.values()):
            return False
        if self.active is not None and self.active in self.viewer.layers:
            self.viewer.layers.selection.active = self.active
        self._thaw()
        return True

    def _thaw(self) -> None:
        self._gc.release()

    def remove(self) -> None:
        """Take the inserted layers out of the viewer again."""
        for layer in self.inserted.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.inserted = {}
        self._todo = []
        self._text_later = {}
        self._thaw()
