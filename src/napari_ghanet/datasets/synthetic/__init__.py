"""Seeded synthetic H&E-like whole-slide images for tests, demos and benchmarks.

A slide is rendered in optical-density (OD) space: every pixel holds a haematoxylin
and an eosin concentration, and the RGB value follows Beer-Lambert,
``I = I0 * 10 ** -(c_H * h + c_E * e)``, with unit stain vectors ``h`` and ``e``
fitted to a real Aperio H&E scan. The tissue is built from a few structures:

* stroma: wavy eosinophilic collagen fibres with white gaps, sparse elongated
  fibroblast nuclei aligned with the fibres and scattered round lymphocytes;
* glands: lumens lined by an epithelium with basal, radially elongated nuclei,
  and small vessels with a flat endothelium and red-cell filled lumens;
* tumour: nests of tumour cells cut by thin stromal septa, with dense, large,
  pleomorphic, hyperchromatic nuclei and a few glandular lumens.

Each patient's pathway ``activity`` (a number in [0, 1], or one per trait in
:data:`ACTIVITY_TRAITS`) sets the tumour extent and the nuclear atypia, so that a
model trained on such slides can learn a prognosis signal from morphology.

Everything is vectorised (coarse random fields upsampled per band of rows,
nuclei stamped in batches); a 6,000 x 6,000 px slide takes a few seconds on two
CPU cores and the output depends only on the arguments (seed included).

This is test and demonstration data: it imitates the colour and the nuclear
statistics of H&E, not the biology of any cancer.

The package, in the order a slide is made:

* :mod:`.result` - :class:`SyntheticSlide`, :class:`Region`, :class:`NucleusKind`,
  :data:`ACTIVITY_TRAITS`, :data:`BACKGROUND_RGB` (the ground truth);
* :mod:`.fields` - random fields, resampling and the coarse tissue/tumour/stroma fields;
* :mod:`.glands` - glands and vessels as rings on the fine grid;
* :mod:`.nuclei` - nucleus parameters, the populations of each kind, stamping;
* :mod:`.render` - the fine pass (regions, stain background) and the level-0 pass;
* :mod:`.slide` - :func:`synthetic_slide`, which runs the phases above;
* :mod:`.measure` - :func:`measure_he_statistics`, to compare with real slides;
* :mod:`.tiff` - :func:`write_pyramidal_tiff`;
* :mod:`.cohort` - :func:`write_synthetic_slide` and :func:`write_synthetic_cohort_slides`.
"""

from __future__ import annotations

from napari_ghanet.datasets.synthetic.cohort import (
    write_synthetic_cohort_slides,
    write_synthetic_slide,
)
from napari_ghanet.datasets.synthetic.measure import measure_he_statistics
from napari_ghanet.datasets.synthetic.result import (
    ACTIVITY_TRAITS,
    BACKGROUND_RGB,
    NucleusKind,
    Region,
    SyntheticSlide,
)
from napari_ghanet.datasets.synthetic.slide import synthetic_slide
from napari_ghanet.datasets.synthetic.tiff import write_pyramidal_tiff

# unit optical-density vectors (R, G, B) of haematoxylin and eosin, defined once
from napari_ghanet.preprocessing.stain import STAIN_VECTORS

__all__ = [
    "ACTIVITY_TRAITS",
    "BACKGROUND_RGB",
    "STAIN_VECTORS",
    "NucleusKind",
    "Region",
    "SyntheticSlide",
    "measure_he_statistics",
    "synthetic_slide",
    "write_pyramidal_tiff",
    "write_synthetic_cohort_slides",
    "write_synthetic_slide",
]
