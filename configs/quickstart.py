r"""Quickstart: FPD end to end on the embedded digits, on a CPU, with no download.

  python -m tinyvit_jax.main --config=configs/quickstart.py --workdir=/tmp/qs

Three runs, in ``/tmp/qs/<run>``:
1. ``teacher``: TinyViT-5M (32 px, windows sized to its feature maps) trained on labels
   for 20 epochs.
2. ``student_fpd``: its save pass stores the teacher's top-3 probabilities for every
   augmented view of the student's 24 epochs, then a 0.5M-parameter TinyViT learns from
   the store alone (soft cross-entropy; no labels, no teacher in the loop).
3. ``student_labels``: the same student, same budget and seed, trained on labels.
Each is evaluated on the held-out split and exported; the final table compares them.
``:runlocal`` shrinks every run to one epoch, as a smoke test.
"""
import ml_collections

from tinyvit_jax.train import config as config_lib

_STUDENT = dict(img_size=32, embed_dims=(32, 64, 96, 128), num_heads=(1, 2, 3, 4),
                depths=(1, 1, 2, 1), window_sizes=(4, 4, 2, 1))
_TEACHER = dict(img_size=32, window_sizes=(4, 4, 2, 1))


def digits_run(model_kwargs: dict, *, runlocal: bool, epochs: int) -> ml_collections.ConfigDict:
  """One run on the digits at 32 px (``benchmarks/deit_distill.py`` builds on it too)."""
  c = config_lib.base_config()
  c.model.name = 'tiny_vit_5m_224'
  c.model.kwargs = ml_collections.ConfigDict(model_kwargs)
  c.num_classes = 10
  c.data.source = 'digits'
  c.data.train = ml_collections.ConfigDict(dict(split='train', image_size=32))
  c.data.eval = ml_collections.ConfigDict(dict(split='test', image_size=32))
  c.data.num_workers = 0
  # Digits are not mirror-symmetric: no flip. Mixing is off, as in the official 22k FPD
  # recipes. Host augmentation: on a CPU it is much cheaper than XLA's (data/augment/).
  c.aug.update(image_size=32, scale=(0.35, 1.0), hflip=0.0, rand_augment='rand-m6-mstd0.5-inc1',
               erase_prob=0.25, mixup_alpha=0.0, cutmix_alpha=0.0, augment_on='host')
  c.eval_aug.update(image_size=32, crop_pct=1.0)
  c.label_smoothing = 0.1
  c.batch_size = 64
  c.eval_batch_size = 120
  c.epochs = 1 if runlocal else epochs
  c.optim.lr = 2e-3
  c.optim.min_lr = 1e-5
  c.optim.warmup_epochs = 0 if runlocal else 2
  c.optim.weight_decay = 0.05
  c.checkpoint_every_steps = 200
  c.log_every_steps = 10
  return c


def student_config(*, runlocal: bool) -> ml_collections.ConfigDict:
  """The student trained on labels (the tests train it too)."""
  config = digits_run(_STUDENT, runlocal=runlocal, epochs=24)
  config.model.display_name = 'tiny_vit_0.5m_32'  # 547K parameters
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  runlocal = arg == 'runlocal'
  if arg not in ('', 'runlocal'):
    raise ValueError(f'configs/quickstart.py takes no argument or "runlocal"; got {arg!r}.')
  teacher = digits_run(_TEACHER, runlocal=runlocal, epochs=20)
  teacher.model.display_name = 'tiny_vit_5m_32'  # TinyViT-5M at 32 px: 5.07M parameters
  student_fpd = student_config(runlocal=runlocal)
  student_fpd.distill.update(kind='fpd', from_store=True, k=3, teacher='{workdir}/teacher/export',
                             verify_rows=256)
  student_labels = student_config(runlocal=runlocal)
  config = ml_collections.ConfigDict()
  config.runs = ml_collections.ConfigDict(
      dict(teacher=teacher, student_fpd=student_fpd, student_labels=student_labels))
  config.run_order = ('teacher', 'student_fpd', 'student_labels')
  return config
