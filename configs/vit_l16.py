"""I-JEPA ViT-L/16, ImageNet-1k, 224px, 600 epochs: the paper's settings (the release ships no ViT-L/16 config).

Command (ImageNet as an ImageFolder tree: /data/imagenet/train/<class>/*.JPEG):
  python -m ijepa_jax.main --config=configs/vit_l16.py --workdir=/ckpt/vitl16 \
      --config.data.path=/data/imagenet
  python -m ijepa_jax.evaluate --checkpoint=/ckpt/vitl16 --config=configs/vit_l16.py \
      --config.data.path=/data/imagenet --eval=linear,lowshot
Expected result (paper, Table 1: 77.5% ImageNet-1k linear top-1 (69.4% at 1% of the labels, fine-tuned) after 600 epochs).
From the paper's appendix A.1: predictor 384 wide with the encoder's heads and depth 12; batch 2048; lr
warmed up linearly from 1e-4 to 1e-3 over 15 epochs, then cosine to 1e-6 (the paper's schedule; the release's
ViT-H configs warm up from 2e-4 over 40); EMA 0.996 -> 1.0. What the release's code does for every config stays
the default here too: smooth-L1 loss (--config.loss=l2: the paper's), cosine weight-decay schedule 0.04 -> 0.4
(--config.optim.wd_schedule=linear: the paper's), bf16 autocast, the release's masks at static shapes
(mask.counts=release). Smallest slices at batch 2048 with remat=dots, by the TPU compiler: a v5p-16 (65.22 of 95 GiB a chip) or a v6e-32 (17.42 of 32)
(experiments/results/tpu_fit_release.md; python -m ijepa_jax.memory --config=configs/vit_l16.py --topology=...).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("vit_b16", os.path.join(os.path.dirname(__file__), "vit_b16.py"))
_vit_b16 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vit_b16)


def get_config():
  return _vit_b16.get_config("L")
