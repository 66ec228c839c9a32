r"""TinyViT fine-tuning on ImageNet-1k from a (21k-pretrained) checkpoint (paper recipe).

  python -m tinyvit_jax.main --config=configs/finetune_1k.py:variant=21m --workdir=DIR \
      --config.init.checkpoint=FPD_WORKDIR/export --data_dir=TFDS_DIR \
      [--config.init.head=in1k_in21k_classes.txt]

The 21,841-class head is re-initialised for 1,000 classes (``init.head='reinit'``), or,
given a class-index file (line c: the 21k class of 1k class c), its rows are gathered so
each class starts from its pretrained decision. Paper: 30 epochs, AdamW lr 5e-4 wd 1e-8,
layer-wise lr decay 0.8, cosine with 5 warmup epochs, BatchNorm frozen, batch 1,024,
clip 5. ``variant``: 5m | 11m | 21m; ``res``: 224 | 384 | 512 (21m only above 224).
"""
import ml_collections

from tinyvit_jax.train import config as config_lib

DROP_PATH = {'5m': 0.0, '11m': 0.1, '21m': 0.2}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='21m', res='224')
  variant, res = args['variant'], int(args['res'])
  if variant not in DROP_PATH or res not in (224, 384, 512) or (res != 224 and variant != '21m'):
    raise ValueError(f'variant={variant}, res={res}: variants are 5m, 11m, 21m at 224, and '
                     '21m at 384 and 512.')
  c = config_lib.base_config()
  c.model.name = f'tiny_vit_{variant}_{res}'
  c.model.kwargs.drop_path_rate = DROP_PATH[variant] if res == 224 else 0.1
  c.num_classes = 1000
  c.dtype = 'auto'  # bfloat16 compute on GPU/TPU, as the paper trained; float32 on CPU
  c.data.train.update(name='imagenet2012', split='train')
  c.data.eval.update(name='imagenet2012', split='validation')
  c.aug.image_size = c.eval_aug.image_size = res
  c.eval_aug.crop_pct = 0.95 if res == 224 else 1.0
  c.batch_size = 1024
  c.epochs = 30
  c.optim.update(lr=5e-4, min_lr=5e-7, warmup_lr=5e-8, warmup_epochs=5, weight_decay=1e-8,
                 clip_grad_norm=5.0, layer_decay=0.8, freeze_bn=True)
  c.init.head = 'reinit'
  if args['runlocal']:
    config_lib.shrink_for_runlocal(c)
  return c
