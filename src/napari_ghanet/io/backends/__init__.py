"""Slide backends, one per file, registered in :mod:`napari_ghanet.io.slide`.

:func:`~napari_ghanet.io.slide.open_slide` tries them in registration order
(:func:`~napari_ghanet.io.slide.backend_names`: ``jpegtiles``, ``openslide``,
``tifffile``, ``pillow``); the first whose ``can_open`` accepts the probed file and that
opens it wins:

* :mod:`.base`: the :class:`~.base.Backend` interface, the file :class:`~.base.Probe`,
  the tifffile log capture and shared pixel/resolution helpers;
* :mod:`.jpegtiles` (``"jpegtiles"``, tried first): TIFF-based slides whose levels are
  tiled JPEG (Aperio ``.svs``, generic tiled TIFF, OME-TIFF), decoded tile by tile with
  libjpeg-turbo; their metadata and any other level come from the backend below that
  would otherwise read the file (OpenSlide, else tifffile);
* :mod:`.openslide` (``"openslide"``, second): everything OpenSlide reads;
* :mod:`.tiff` (``"tifffile"``, third): tifffile pyramids (main IFDs, SubIFDs, OME) and
  plain TIFFs;
* :mod:`.image` (``"pillow"``, last): PNG/JPEG and other plain images through Pillow.

Use :func:`napari_ghanet.io.slide.open_slide`; the classes here are for extending it
(:func:`napari_ghanet.io.slide.register_backend` appends a backend to the order, or puts
it ``before=`` a registered one).
"""
