r"""DeiT on ImageNet-1k, without or with distillation (paper recipe).

  python -m tinyvit_jax.main --config=configs/deit.py:size=tiny,distill=hard --workdir=DIR \
      --config.distill.teacher=REGNETY_160_EXPORT --data_dir=TFDS_DIR

``size``: tiny | small | base. ``distill``: none | soft | hard (distilled models, with the
distillation token; hard is the paper's best). ``store``: read the teacher from a logit
store (``--config.distill.store=DIR``; saved first if incomplete) instead of running it
online. Paper: 300 epochs, AdamW lr 5e-4 x batch / 512, wd 0.05, 5 warmup epochs,
RandAugment m9, Mixup 0.8, CutMix 1.0, random erasing 0.25, label smoothing 0.1, drop
path 0.1; distillation alpha 0.5, tau 1. Expected top-1 (Ti/S/B): 72.2 / 79.8 / 81.8
without distillation, 74.5 / 81.2 / 83.4 with hard distillation (RegNetY-16GF teacher).
Repeated augmentation: 3 views per example, 64 positions apart (DeiT's RASampler at 64
images per GPU; ``data/order.py``), the epoch keeping the plain sampler's size.
``runlocal``: 1 epoch on synthetic images, the teacher a briefly trained resnet18.
"""
import ml_collections

from tinyvit_jax.train import config as config_lib

SIZES = ('tiny', 'small', 'base')
KINDS = ('none', 'soft', 'hard')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, size='tiny', distill='none', store=False)
  size, kind = args['size'], args['distill']
  if size not in SIZES or kind not in KINDS:
    raise ValueError(f'size={size}, distill={kind}: sizes are {SIZES}, kinds {KINDS}.')
  c = config_lib.base_config()
  c.model.name = f'deit_{size}_{"" if kind == "none" else "distilled_"}patch16_224'
  c.model.kwargs.drop_path_rate = 0.1
  c.num_classes = 1000
  c.dtype = 'auto'  # bfloat16 compute on GPU/TPU, as the paper trained; float32 on CPU
  c.batch_size = 1024
  c.epochs = 300
  c.data.update(num_repeats=3, repeat_stride=64)
  c.optim.update(lr=5e-4 * c.batch_size / 512, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5,
                 weight_decay=0.05, clip_grad_norm=0.0)
  c.distill.update(kind=kind, from_store=bool(args['store']), alpha=0.5, tau=1.0)
  if not args['runlocal']:
    return c
  config_lib.shrink_for_runlocal(c)
  if kind == 'none':
    return c
  c.distill.teacher = '{workdir}/teacher/export'
  teacher = config_lib.shrink_for_runlocal(config_lib.base_config())
  teacher.model.name = 'resnet18'
  teacher.model.kwargs = ml_collections.ConfigDict()
  teacher.num_classes = c.num_classes
  teacher.data = c.data
  teacher.stages = ('train', 'export')
  recipe = ml_collections.ConfigDict()
  recipe.runs = ml_collections.ConfigDict(dict(teacher=teacher, student=c))
  recipe.run_order = ('teacher', 'student')
  return recipe
