"""``train_config``'s one-epoch student, distilled from a logit store (FPD, top-3).

  python -m tinyvit_jax.main --config=tests/train_config_fpd.py --workdir=DIR \\
      --config.distill.teacher=TEACHER_DIR

The run first saves the teacher's rows of its epoch (stage ``save_logits``), then trains
from them alone.
"""
import ml_collections

from configs import quickstart


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = quickstart.student_config(runlocal=False)
  config.epochs = 1
  config.optim.warmup_epochs = 0
  config.checkpoint_every_steps = 5
  config.log_every_steps = 1
  config.record_examples = True
  config.distill.update(kind='fpd', from_store=True, k=3)
  config.stages = ('save_logits', 'train')
  return config
