"""I-JEPA ViT-B/16, ImageNet-1k, 224px, 600 epochs: the paper's settings (the release ships no ViT-B/16 config).

Command (ImageNet as an ImageFolder tree: /data/imagenet/train/<class>/*.JPEG):
  python -m ijepa_jax.main --config=configs/vit_b16.py --workdir=/ckpt/vitb16 \
      --config.data.path=/data/imagenet
  python -m ijepa_jax.evaluate --checkpoint=/ckpt/vitb16 --config=configs/vit_b16.py \
      --config.data.path=/data/imagenet --eval=linear,lowshot
Expected result (paper, Table 1: 72.9% ImageNet-1k linear top-1 after 600 epochs; the masking ablations (Table 6, Appendix C) train it for 300 epochs).
From the paper's appendix A.1: predictor 384 wide with the encoder's heads and depth 6; batch 2048; lr
warmed up linearly from 1e-4 to 1e-3 over 15 epochs, then cosine to 1e-6 (the paper's schedule; the release's
ViT-H configs warm up from 2e-4 over 40); EMA 0.996 -> 1.0. What the release's code does for every config stays
the default here too: smooth-L1 loss (--config.loss=l2: the paper's), cosine weight-decay schedule 0.04 -> 0.4
(--config.optim.wd_schedule=linear: the paper's), bf16 autocast, the release's masks at static shapes
(mask.counts=release). Smallest slices at batch 2048 with remat=dots, by the TPU compiler: a v5p-8 (57.55 of 95 GiB a chip) or a v6e-8 (31.92 of 32)
(experiments/results/tpu_fit_release.md; python -m ijepa_jax.memory --config=configs/vit_b16.py --topology=...).
"""
from ijepa_jax.defaults import base_config

# The encoder size and predictor depth of each 16-px-patch model the paper trains (appendix A.1);
# configs/vit_l16.py is get_config("L").
VARIANTS = {"B": ("vit_base", 6), "L": ("vit_large", 12)}


def get_config(variant: str = "B"):
  c = base_config()
  c.model.name, c.model.predictor_depth = VARIANTS[variant]
  c.model.patch_size = 16
  c.data.image_size = 224
  c.num_epochs, c.warmup_epochs = 600, 15
  c.optim.start_lr = 1e-4
  c.dtype = "bfloat16"
  # The release's masks (mask.counts=release) on the 14x14 grid: each per-GPU batch of reference_batch (128)
  # images' contexts truncated to its shortest, padded to num_context. The longest truncated context in 3,000
  # simulated batches was 67 of the 196 tokens; tokens a cap would cut are counted (context_tokens_cut).
  c.mask.counts, c.mask.num_context = "release", 96
  # Each global batch padded to the shortest of these context lengths holding its longest context, not always
  # to num_context: the analytic FLOPs per image fall from ~1.4x the release's mean to <= 1.2x
  # (experiments/results/buckets.md); one compiled step per bucket, all before step 1.
  c.mask.context_buckets = (64, 72, 96)
  return c
