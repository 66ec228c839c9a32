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
The teacher computes in bfloat16 on a GPU or TPU (``distill.teacher_dtype='auto'``), its
weights replicated on every device: ViT-L/14 is 304M parameters (1.2 GB in float32),
far below ``distill/teachers/jax_teacher.py``'s line for sharding them (a quarter of one
device's memory). ``variant``: 5m | 11m | 21m. ``runlocal``: a tiny random-init
CLIP-normalised ViT teacher exported untrained, then its store and a student, on 64
synthetic images at 32 px (about 40 s on 2 cores; tests/test_train_recipes.py runs it).
"""
import ml_collections

from tinyvit_jax import normalisation
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
  # The teacher in bfloat16 on GPU/TPU too, its weights sharded if too big for one device.
  c.distill.update(kind='fpd', from_store=True, k=100, verify_rows=1024, teacher_dtype='auto',
                   teacher_sharding='auto')
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
  config_lib.shrink_for_runlocal(config, image_size=32, num_examples=64)
  recipe = ml_collections.ConfigDict()
  recipe.runs = ml_collections.ConfigDict(dict(teacher=runlocal_teacher(config), student=config))
  recipe.run_order = ('teacher', 'student')
  return recipe


def runlocal_teacher(student_config) -> ml_collections.ConfigDict:
  """The paper's kind of teacher in miniature: a CLIP-normalised ViT (2 blocks of width 32,
  8 px patches), exported untrained, so the save pass exercises a ViT teacher in its own
  normalisation, in ``teacher_dtype``, at no training cost."""
  c = config_lib.base_config()
  c.model.name = 'vit_base_patch16_clip_224'
  c.model.kwargs.update(patch_size=8, embed_dim=32, depth=2, num_heads=2)
  c.num_classes = student_config.num_classes
  config_lib.shrink_for_runlocal(c, image_size=student_config.aug.image_size)
  c.data = student_config.data
  clip = dict(mean=normalisation.OPENAI_CLIP_MEAN, std=normalisation.OPENAI_CLIP_STD)
  c.aug.update(clip)
  c.eval_aug.update(clip)  # what its export records, and the save pass re-normalises to
  c.stages = ('export',)
  return c
