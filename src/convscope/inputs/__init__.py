"""Inputs: image files, folders, lists and archives read robustly (:mod:`.images`,
:mod:`.sources`), batched (:mod:`.batches`) or decoded on the device (:mod:`.decode`), the
bundled sample photos (:mod:`.samples`), worker sizing (:mod:`.workers`) and safe file writes
(:mod:`.fileio`)."""

from convscope.inputs.batches import Batches, ImageBatch, collate
from convscope.inputs.images import ImageRecord, SkipReport, display_name, skip_reason
from convscope.inputs.sources import ImageSource, Transform, open_images, open_spec

__all__ = [
    "Batches",
    "ImageBatch",
    "ImageRecord",
    "ImageSource",
    "SkipReport",
    "Transform",
    "collate",
    "display_name",
    "open_images",
    "open_spec",
    "skip_reason",
]
