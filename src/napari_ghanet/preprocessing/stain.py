"""H&E stain optical-density vectors, defined once for the whole package.

Optical density (OD) of a transmitted-light pixel is ``-log10(I / I0)`` per RGB channel,
with ``I0`` the light through bare glass (white). Beer-Lambert makes the OD of a stained
pixel a non-negative combination of one fixed OD direction per stain:
``OD = c_H * HEMATOXYLIN_OD + c_E * EOSIN_OD``, where ``c_H`` and ``c_E`` are stain
concentrations in OD units (dimensionless; about 0.1-0.4 in cytoplasm and stroma, 0.5-1.5
in nuclei).

The vectors are unit length (R, G, B), fitted to a real Aperio H&E scan at 20x
(0.499 um/px): haematoxylin at the Macenko extreme angle, eosin as the median direction of
the eosin-dominated tissue pixels. The morphometric encoder unmixes with them and the
synthetic slides are rendered with them, so both describe the same stains.

Examples
--------
>>> import math
>>> round(math.hypot(*HEMATOXYLIN_OD), 3), round(math.hypot(*EOSIN_OD), 3)
(1.0, 1.0)
>>> STAIN_VECTORS["eosin"] == EOSIN_OD
True
"""

from __future__ import annotations

__all__ = ["EOSIN_OD", "HEMATOXYLIN_OD", "STAIN_VECTORS"]

#: Unit OD vector (R, G, B) of haematoxylin (nuclei): absorbs red and green most.
HEMATOXYLIN_OD: tuple[float, float, float] = (0.8089, 0.5108, 0.2911)
#: Unit OD vector (R, G, B) of eosin (cytoplasm, stroma): absorbs green most.
EOSIN_OD: tuple[float, float, float] = (0.2094, 0.8250, 0.5250)
#: Both vectors by stain name.
STAIN_VECTORS: dict[str, tuple[float, float, float]] = {
    "hematoxylin": HEMATOXYLIN_OD,
    "eosin": EOSIN_OD,
}
