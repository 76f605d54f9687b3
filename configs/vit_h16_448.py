"""I-JEPA ViT-H/16 at 448px, ImageNet-1k, 300 epochs: the release's in1k_vith16-448_ep300 values.

Command:
  python -m ijepa_jax.main --config=configs/vit_h16_448.py --workdir=/ckpt/vith16_448 \
      --config.data.path=/data/imagenet
Expected result (paper, Table 1): 81.1% ImageNet-1k linear top-1, 77.3% with 1% of the labels.
Loss smooth-L1 (release); --config.loss=l2 gives the paper's stated loss. A 28x28 patch grid.
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
  c.model.name, c.model.patch_size = "vit_huge", 16
  c.model.predictor_depth = 12
  c.data.image_size = 448
  c.num_epochs, c.warmup_epochs = 300, 40
  c.dtype = "bfloat16"
  c.mask.reference_batch = 16  # the release's per-device batch for this config
  # The release's masks (mask.counts=release): whole target blocks, each per-GPU batch of reference_batch
  # (16) images' contexts truncated to its shortest, padded to static shapes. num_context caps the padding
  # at 448 of the 729 tokens a context can have: the longest truncated context in 60,000 simulated batches
  # was 401; tokens a cap would cut are counted in the log (context_tokens_cut).
  c.mask.counts, c.mask.num_context = "release", 448
  # Each global batch padded to the shortest of these context lengths holding its longest context, not always
  # to num_context: the analytic FLOPs per image fall from ~1.4x the release's mean to <= 1.2x
  # (experiments/results/buckets.md); one compiled step per bucket, all before step 1.
  c.mask.context_buckets = (360, 376, 400, 448)
  return c
