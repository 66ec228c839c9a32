r"""TinyViT pretraining on ImageNet-21k by fast pretraining distillation (paper recipe).

  python -m tinyvit_jax.main --config=configs/fpd_21k.py:variant=5m --workdir=/mnt/gcs/B/fpd5m \
      --data_dir=/mnt/gcs/B/in21k --config.distill.teacher=/mnt/gcs/B/teacher_export

The data are two prepared folders, ``in21k/train`` and the held-out ``in21k/val`` (each
``python -m tinyvit_jax.data.sources.prepare --folder IMAGES --out in21k/train``); ``--data_dir``
names their parent (or give ``--config.data.train.directory`` and ``.eval.directory``).
The save pass first stores the teacher's top-100 probabilities for all 90 epochs (the
paper's teacher is CLIP ViT-L/14 fine-tuned on 21k: convert it into a checkpoint of ours,
or use any registered model), then the student trains from the store alone. Paper: 90
epochs, AdamW lr 2e-3 wd 0.01, cosine with 5 warmup epochs, batch 4,096, clip 5, drop
path 0 (5m, 11m) or 0.1 (21m); RandAugment, random erasing and colour jitter (off when
RandAugment is on, as in timm); Mixup and CutMix off, as in the official 21k configs.
``variant``: 5m | 11m | 21m. ``runlocal``: 2 tiny runs (a briefly trained teacher, then
its store and student) on synthetic images.
"""
import ml_collections

from tinyvit_jax.train import config as config_lib

DROP_PATH = {'5m': 0.0, '11m': 0.0, '21m': 0.1}


def student(variant: str) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model.name = f'tiny_vit_{variant}_224'
  c.model.kwargs.drop_path_rate = DROP_PATH[variant]
  c.num_classes = 21841
  c.dtype = 'auto'  # bfloat16 compute on GPU/TPU, as the paper trained; float32 on CPU
  c.data.source = 'array_record'  # DATA/train and DATA/val, from tinyvit_jax.data.sources.prepare
  c.data.name = 'imagenet21k'
  c.data.train = ml_collections.ConfigDict(dict(directory=''))
  c.data.eval = ml_collections.ConfigDict(dict(directory=''))
  c.aug.update(mixup_alpha=0.0, cutmix_alpha=0.0)
  c.label_smoothing = 0.0
  c.batch_size = 4096
  c.epochs = 90
  c.optim.update(lr=2e-3, min_lr=2e-5, warmup_lr=2e-6, warmup_epochs=5, weight_decay=0.01,
                 clip_grad_norm=5.0)
  c.distill.update(kind='fpd', from_store=True, k=100, verify_rows=1024)
  c.eval_every_epochs = 5
  return c


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, variant='5m')
  if args['variant'] not in DROP_PATH:
    raise ValueError(f'variant={args["variant"]!r}; expected one of {sorted(DROP_PATH)}.')
  config = student(args['variant'])
  if not args['runlocal']:
    return config
  config.num_classes = 100
  config.distill.update(k=10, verify_rows=32, teacher='{workdir}/teacher/export')
  config_lib.shrink_for_runlocal(config)
  teacher = config_lib.shrink_for_runlocal(student(args['variant']))
  teacher.num_classes = config.num_classes
  teacher.data = config.data
  teacher.distill.update(kind='none', from_store=False, k=10)
  recipe = ml_collections.ConfigDict()
  recipe.runs = ml_collections.ConfigDict(dict(teacher=teacher, student=config))
  recipe.run_order = ('teacher', 'student')
  return recipe
