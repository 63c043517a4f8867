"""The stages of a prediction, each callable on its own.

slide -> :func:`open_stage` -> :func:`grid_stage` (tissue mask + patch grid) ->
:func:`regions_stage` -> :func:`features_stage` (cached features, or embed and cache) ->
:func:`model_stage` (model bundle on the bag of features) -> :func:`assemble_stage` (a
:class:`~napari_ghanet.inference.result.Prediction`).

The modules follow the data: :mod:`.run` (progress, cancel, clocks), :mod:`.slide` (the
per-slide stages and the encoder a bundle needs), :mod:`.model` (the model and patch
scores), :mod:`.assemble` (the Prediction), :mod:`.bag` (a patient's slides as one bag)
and :mod:`.to_file` (one slide's features file). Each imports only the ones before it.

:func:`napari_ghanet.inference.predict.predict_slide` and ``predict_patient`` compose
them; ``ghanet embed`` and cohort runners use :func:`embed_to_file`. Stages report
progress as ``progress(stage, done, total)`` and stop with
:class:`~napari_ghanet.errors.Cancelled` when ``cancel`` (a :class:`threading.Event`) is
set. No napari or Qt import here.

Units: coordinates are level-0 pixels, (x, y) top-left; ``patch_px`` pixels at
``target_mpp`` um/px; times in seconds.

Examples
--------
>>> from napari_ghanet.inference.stages import check_cancel
>>> import threading
>>> check_cancel(threading.Event())  # not set: nothing happens
"""

from napari_ghanet.inference.stages.assemble import assemble_stage
from napari_ghanet.inference.stages.bag import (
    BagEncoder,
    BagRun,
    bag_heatmap_stage,
    bag_settings,
    bag_stage,
    patch_geometry,
    patient_slides,
    slide_regions,
    slide_stage,
)
from napari_ghanet.inference.stages.model import (
    ModelOutputs,
    heatmap_stage,
    model_stage,
    patch_scorers,
    score_patches_stage,
)
from napari_ghanet.inference.stages.run import (
    ProgressCallback,
    check_cancel,
    default_cache_dir,
    slide_info,
)
from napari_ghanet.inference.stages.slide import (
    SlideFeatures,
    SlideRun,
    build_encoder,
    feature_spec,
    features_stage,
    grid_stage,
    open_stage,
    qc_stage,
    regions_stage,
)
from napari_ghanet.inference.stages.to_file import EmbedOutcome, embed_to_file

__all__ = [
    "BagEncoder",
    "BagRun",
    "EmbedOutcome",
    "ModelOutputs",
    "ProgressCallback",
    "SlideFeatures",
    "SlideRun",
    "assemble_stage",
    "bag_heatmap_stage",
    "bag_settings",
    "bag_stage",
    "build_encoder",
    "check_cancel",
    "default_cache_dir",
    "embed_to_file",
    "feature_spec",
    "features_stage",
    "grid_stage",
    "heatmap_stage",
    "model_stage",
    "open_stage",
    "patch_geometry",
    "patch_scorers",
    "patient_slides",
    "qc_stage",
    "regions_stage",
    "score_patches_stage",
    "slide_info",
    "slide_regions",
    "slide_stage",
]
