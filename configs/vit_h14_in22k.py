"""I-JEPA ViT-H/14, ImageNet-22k, 224px, 66 epochs: the release's in22k_vith14_ep66 values.

Command (ImageNet-22k as an ImageFolder tree with a train/ folder of class folders):
  python -m ijepa_jax.main --config=configs/vit_h14_in22k.py --workdir=/ckpt/vith14_22k \
      --config.data.path=/data/imagenet22k
Expected result: a checkpoint equivalent to the release's in22k ViT-H/14 one (its downstream numbers
are in the paper's transfer tables; ../shared/REFERENCE.md records none for it). Loss smooth-L1
(release; --config.loss=l2 for the paper's). Warmup is 3 epochs in the release's config.
Precision: dtype=bfloat16, the release's CUDA autocast (bf16 matmuls and conv, fp32 residual stream,
LayerNorm, softmax and loss; fp32 parameters and optimizer state; experiments/results/release_parity.md).
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
  return c
