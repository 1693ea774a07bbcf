"""Pruning-mask visualisation: which patches each reduction point kept, on the views and the image.

- :mod:`.masks`: pure maps from a point's ``ids`` / ``source`` to the patch grid (keep mask, status,
  merge groups) and from a view's grid back onto the original image (crop box, flip).
- :mod:`.overlay`: RGBA overlays of those maps.
- :mod:`.trace`: run a framework on one image's two global views and keep every point's record.
- :mod:`.runs`: frameworks from checkpoints (one or several, sorted by step) or fresh weights.
- :mod:`.figure`: the matplotlib figures (methods side by side; a run across training).
- :mod:`.cli`: ``add_viz_args`` / ``run_viz`` for ``simprune viz``.

Only the pure maps are imported here; the rest pulls in the training stack, import it from its module.
"""

from simprune.viz.masks import (
    DROPPED,
    FUSED,
    KEPT,
    MERGED,
    alive_from_source,
    kept_from_ids,
    merge_groups,
    num_groups,
    patch_boxes,
    patch_status,
    pixel_to_patch,
    to_original,
)

__all__ = [
    "DROPPED",
    "FUSED",
    "KEPT",
    "MERGED",
    "alive_from_source",
    "kept_from_ids",
    "merge_groups",
    "num_groups",
    "patch_boxes",
    "patch_status",
    "pixel_to_patch",
    "to_original",
]
