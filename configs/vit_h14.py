"""I-JEPA ViT-H/14, ImageNet-1k, 224px, 300 epochs: the release's in1k_vith14_ep300 values.

Command (ImageNet as an ImageFolder tree: /data/imagenet/train/<class>/*.JPEG):
  python -m ijepa_jax.main --config=configs/vit_h14.py --workdir=/ckpt/vith14 \
      --config.data.path=/data/imagenet
Expected result (paper, Table 1): 79.3% ImageNet-1k linear probe top-1 with the target encoder,
after 300 epochs at global batch 2048 (under 1200 A100-hours in the release). Measured by
  python -m ijepa_jax.evaluate --checkpoint=/ckpt/vith14 --config=configs/vit_h14.py \
      --config.data.path=/data/imagenet --eval=linear,lowshot
(the paper's LARS linear probe on features streamed from shards; README, "Using an encoder").
Loss: smooth-L1, because the release trained its published checkpoints with it (the paper says L2;
set --config.loss=l2 for the paper's variant).
Precision: dtype=bfloat16, the release's CUDA autocast (bf16 matmuls and conv, fp32 residual stream,
LayerNorm, softmax and loss; fp32 parameters and optimizer state; experiments/results/release_parity.md).
Without ImageNet at data.path the run stops at once with a message naming the override.
Masks: the release's collator at static shapes (mask.counts=release: whole target blocks, contexts
truncated per per-GPU batch, padded and masked); its cost against the smaller fixed layout
(--config.mask.counts=fixed) is in experiments/results/mask_cost.md. Each global batch is padded to the
shortest of mask.context_buckets that holds its contexts: 1.18x the release's FLOPs per image by the TPU
compiler on a v5p-128 and a v6e-256, 1.42x with one shape (experiments/results/buckets.md; all compiled before
step 1; --config.mask.context_buckets='()' pads every batch to num_context).
"""
from ijepa_jax.defaults import base_config


def get_config():
  c = base_config()
  c.model.name, c.model.patch_size = "vit_huge", 14
  c.model.predictor_depth = 12
  c.data.image_size = 224
  c.num_epochs, c.warmup_epochs = 300, 40
  c.dtype = "bfloat16"
  # The release's masks (mask.counts=release): whole target blocks, each per-GPU batch of reference_batch
  # (128) images' contexts truncated to its shortest, padded to static shapes. num_context caps the padding
  # at 128 of the 225 tokens a context can have: the longest truncated context in 8,000 simulated batches
  # was 102; tokens a cap would cut are counted in the log (context_tokens_cut).
  c.mask.counts, c.mask.num_context = "release", 128
  # Each global batch padded to the shortest of these context lengths holding its longest context, not always
  # to num_context: the analytic FLOPs per image fall from ~1.4x the release's mean to <= 1.2x
  # (experiments/results/buckets.md); one compiled step per bucket, all before step 1.
  c.mask.context_buckets = (88, 96, 104, 128)
  return c
