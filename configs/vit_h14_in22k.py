"""I-JEPA ViT-H/14, ImageNet-22k, 224px, 66 epochs: the release's in22k_vith14_ep66 values.

Command (ImageNet-22k as an ImageFolder tree with a train/ folder of class folders):
  python -m ijepa_jax.main --config=configs/vit_h14_in22k.py --workdir=/ckpt/vith14_22k \
      --config.data.path=/data/imagenet22k
Expected result: a checkpoint equivalent to the release's in22k ViT-H/14 one (its downstream numbers
are in the paper's transfer tables; ../shared/REFERENCE.md records none for it). Loss smooth-L1
(release; --config.loss=l2 for the paper's). Warmup is 3 epochs in the release's config.
Precision: dtype=bfloat16, the release's CUDA autocast (bf16 matmuls and conv, fp32 residual stream,
LayerNorm, softmax and loss; fp32 parameters and optimizer state; experiments/results/release_parity.md).
Masks: the release's collator at static shapes (mask.counts=release: whole target blocks, contexts
truncated per per-GPU batch, padded and masked); its cost against the smaller fixed layout
(--config.mask.counts=fixed) is in experiments/results/mask_cost.md. Each global batch is padded to the
shortest of mask.context_buckets that holds its contexts (experiments/results/buckets.md; all compiled before
step 1; --config.mask.context_buckets='()' pads every batch to num_context).
"""
from ijepa_jax.defaults import base_config


def get_config():
  c = base_config()
  c.model.name, c.model.patch_size = "vit_huge", 14
  c.model.predictor_depth = 12
  c.data.image_size = 224
  c.data.path = "/data/imagenet22k"
  c.num_epochs, c.warmup_epochs = 66, 3
  c.dtype = "bfloat16"
  c.mask.reference_batch = 32  # the release's per-device batch for this config
  # The release's masks (mask.counts=release): whole target blocks, each per-GPU batch of reference_batch
  # (32) images' contexts truncated to its shortest, padded to static shapes. num_context caps the padding
  # at 128 of the 225 tokens a context can have: the longest truncated context in 30,000 simulated batches
  # was 113; tokens a cap would cut are counted in the log (context_tokens_cut).
  c.mask.counts, c.mask.num_context = "release", 128
  # Each global batch padded to the shortest of these context lengths holding its longest context, not always
  # to num_context: the analytic FLOPs per image fall from ~1.4x the release's mean to <= 1.2x
  # (experiments/results/buckets.md); one compiled step per bucket, all before step 1.
  c.mask.context_buckets = (104, 112, 128)
  return c
