"""Input pipelines: Fashion-MNIST (IDX files), ImageNet-style image folders and their record shards
(ijepa_jax.prepare), TFDS array_record, synthetic.

  sources.py     `make_source`, the config.data accessors, the array sources (Fashion-MNIST, synthetic) and TFDS
  encoded.py     sources of encoded image files: image folders and record shards, decoded on demand
  transforms.py  random resized crop / center resize, per example (Pillow) and batched (numpy)
  pipeline.py    the grain pretraining pipeline (`make_pretrain_dataset`) and `load_eval_arrays`

Pretraining (`make_pretrain_dataset`) is a grain pipeline

  (global step, this process's rows) -> source index (GlobalOrder: a new permutation each epoch)
         -> random resized crop -> batch -> masks -> to_iter_dataset (-> mp_prefetch when data.num_workers > 0)

Everything a global batch holds is a function of (config, global step, global row): the example is position
step * batch_size + row of the shuffled stream, its crop is drawn from (seed, step, row), and each group of
mask.reference_batch rows (the release's per-GPU batch; counts=fixed: the whole batch) draws its masks from
(seed, step, group). So the batches are the same on any number of processes, worker processes or threads,
and a run resumes at any step on any process count from the step alone (no iterator state).

In-memory sources of equal-size images (Fashion-MNIST, synthetic) skip the per-example stage: the
pipeline batches example *indices* and a single vectorised step gathers, crops and resizes the whole
batch (separable bilinear weight matrices, the same filter as Pillow's BILINEAR resize). File-backed
sources (image folders, record shards, TFDS) decode and crop per example (Pillow), batched afterwards. Image
folders and record shards draw each crop box from the file's header before decoding (the same draws as cropping the
decoded image) and, for a JPEG whose crop is >= 4x the output size each way, decode at 1/2-1/8 scale
(libjpeg's DCT scaling; data.jpeg_draft=False turns it off); only the crop is converted and resized.
JPEGs are decoded by simplejpeg (libjpeg-turbo) where it is installed, else by Pillow: the same pixels.

Batches are numpy dicts: {'images': uint8 [b, S, S, C], 'skipped': int32 [b] (undecodable files replaced
to produce each example; sum it for the total), **mask_fn(rng, b)} with b = batch_size // process_count.
No TensorFlow is imported (TFDS is only used through `tfds.data_source`, which decodes with Pillow).
"""
from ijepa_jax.data.pipeline import (GlobalOrder, MaskFn, context_buckets, load_eval_arrays, make_eval_dataset,
                                     make_pretrain_dataset, mask_group_size, process_rows)
from ijepa_jax.data.encoded import IMAGE_EXTENSIONS, EncodedImages, ImageFolder, RecordShards
from ijepa_jax.data.sources import (DEFAULT_FASHION_MNIST_PATH, SOURCES, ArraySource, FashionMnistSource, SyntheticSource,
                                    TfdsSource, load_fashion_mnist, make_source)
from ijepa_jax.data.transforms import center_resize, random_resized_crop
from ijepa_jax.data.transforms import _draft_factor, _sample_crop_box  # pylint: disable=unused-import  # noqa: F401 (used by tests)
# Private helpers that tests/test_data.py reaches as data._name (compared against the per-example crops).
from ijepa_jax.data.transforms import _resize_boxes, _sample_crop_boxes  # pylint: disable=unused-import  # noqa: F401 (used by tests)

__all__ = [
    "SOURCES", "IMAGE_EXTENSIONS", "DEFAULT_FASHION_MNIST_PATH", "MaskFn",
    "ArraySource", "FashionMnistSource", "SyntheticSource", "EncodedImages", "ImageFolder", "RecordShards", "TfdsSource",
    "load_fashion_mnist", "make_source", "random_resized_crop", "center_resize",
    "make_pretrain_dataset", "make_eval_dataset", "load_eval_arrays", "GlobalOrder", "mask_group_size", "process_rows", "context_buckets",
]
