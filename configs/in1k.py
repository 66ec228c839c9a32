r"""TinyViT trained from scratch on ImageNet-1k (the paper's "IN-1k only" rows).

  python -m tinyvit_jax.main --config=configs/in1k.py:variant=5m --workdir=DIR \
      --data_dir=TFDS_DIR

Cream's 1k configs: 300 epochs, AdamW lr 1e-3 wd 0.05, cosine with 20 warmup epochs,
batch 1,024, clip 5, drop path 0 / 0.1 / 0.2 (5m / 11m / 21m), RandAugment m9, random
erasing 0.25, Mixup 0.8, CutMix 1.0, label smoothing 0.1. Expected top-1: 79.1 / 81.5 /
83.1. ``runlocal``: 1 epoch on synthetic images.
"""
import ml_collections

from tinyvit_jax.train import config as config_lib

DROP_PATH = {'5m': 0.0, '11m': 0.1, '21m': 0.2}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='5m')
  if args['variant'] not in DROP_PATH:
    raise ValueError(f'variant={args["variant"]!r}; expected one of {sorted(DROP_PATH)}.')
  c = config_lib.base_config()
  c.model.name = f'tiny_vit_{args["variant"]}_224'
  c.model.kwargs.drop_path_rate = DROP_PATH[args['variant']]
  c.num_classes = 1000
  c.dtype = 'auto'  # bfloat16 compute on GPU/TPU, as the paper trained; float32 on CPU
  c.eval_aug.crop_pct = 0.95
  c.batch_size = 1024
  c.epochs = 300
  c.optim.update(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=20, weight_decay=0.05,
                 clip_grad_norm=5.0)
  if args['runlocal']:
    config_lib.shrink_for_runlocal(c)
  return c
