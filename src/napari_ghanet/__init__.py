"""napari-ghanet: G-HANet survival prediction from whole-slide images.

The headless modules (``slide``, ``tissue``, ``patches``, ``encoders``,
``embedding``, ``features_io``, ``model``, ``bundle``, ``predict``) import neither
napari nor Qt; only ``_reader``, ``_widget`` and ``_sample_data`` do.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
