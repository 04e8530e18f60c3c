"""Training data for DeepGen stages 1 and 2: datasets, fix_pixels resizing, the task pattern, caption drop.

Nothing here knows about the model; a sample is text plus pixel tensors in [-1, 1].  One module a job, in
the order data flows (each module's docstring explains its part):

- ``rows.py``: task names, parsed rows, samples, bad-row errors and the :class:`DataReport`;
- ``scan.py``: sources (JSON/JSONL lists, image folders) → rows; the formats, ``verify`` levels, bad rows;
- ``images.py``: the official size checks and decoding an image to a fix_pixels-resized tensor;
- ``datasets.py``: rows → samples (with fallback past rows that fail to decode) and ``load_datasets``;
- ``sampler.py``: the task pattern and the seeded, sharded, resumable sampler;
- ``loader.py``: ``MicroBatchLoader`` (micro-batches, caption dropout, its position for resume);
- ``synthetic.py``: a small random data set for tests.
"""

from ...sizes import fix_pixels_size
from .datasets import EditDataset, TaskDatasets, TextToImageDataset, load_datasets
from .images import VERIFY_LEVELS, check_image_size, image_to_tensor, load_training_image, resize_fix_pixels
from .loader import MicroBatch, MicroBatchLoader, apply_caption_dropout
from .rows import (
    IMAGE2IMAGE,
    TEXT2IMAGE,
    BadRowError,
    DataReport,
    DataSourceNotFoundError,
    EditRow,
    EditSample,
    EmptyDatasetError,
    T2IRow,
    TextToImageSample,
)
from .sampler import BatchPlan, TaskBatchSampler, TaskPattern, derive_seed
from .scan import IMAGE_EXTENSIONS, read_json_rows, scan_image_folder, scan_json_source
from .synthetic import write_synthetic_dataset

__all__ = [
    "TEXT2IMAGE",
    "IMAGE2IMAGE",
    "IMAGE_EXTENSIONS",
    "VERIFY_LEVELS",
    "fix_pixels_size",
    "check_image_size",
    "resize_fix_pixels",
    "image_to_tensor",
    "load_training_image",
    "TextToImageSample",
    "EditSample",
    "T2IRow",
    "EditRow",
    "DataReport",
    "BadRowError",
    "EmptyDatasetError",
    "DataSourceNotFoundError",
    "TextToImageDataset",
    "EditDataset",
    "TaskDatasets",
    "read_json_rows",
    "scan_json_source",
    "scan_image_folder",
    "load_datasets",
    "TaskPattern",
    "BatchPlan",
    "TaskBatchSampler",
    "MicroBatch",
    "MicroBatchLoader",
    "apply_caption_dropout",
    "derive_seed",
    "write_synthetic_dataset",
]
