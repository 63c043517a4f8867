"""Slide backends, one per file, registered in :mod:`napari_ghanet.io.slide`.

* :mod:`.base`: the :class:`~.base.Backend` interface, the file :class:`~.base.Probe`,
  the tifffile log capture and shared pixel/resolution helpers;
* :mod:`.openslide`: OpenSlide formats (tried first);
* :mod:`.tiff`: tifffile pyramids (main IFDs, SubIFDs, OME) and plain TIFFs (second);
* :mod:`.image`: PNG/JPEG and other plain images through Pillow (last).

Use :func:`napari_ghanet.io.slide.open_slide`; the classes here are for extending it
(:func:`napari_ghanet.io.slide.register_backend`).
"""
