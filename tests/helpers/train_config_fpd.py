"""``train_config``'s one-epoch student, distilled from a logit store (FPD, top-3).
(``tests`` imports as a namespace package from the repository root, where runs start.)

  python -m tinyvit_jax.main --config=tests/helpers/train_config_fpd.py --workdir=DIR \\
      --config.distill.teacher=TEACHER_DIR

The run first saves the teacher's rows of its epoch (stage ``save_logits``), then trains
from them alone. Its eval skips the teacher agreement (the quickstart's student checks
it), which would cost each launch of the multi-process tests a teacher restore.
"""
import ml_collections

from tests.helpers import train_config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = train_config.get_config(arg)
  config.distill.update(kind='fpd', from_store=True, k=3, eval_teacher=False)
  config.stages = ('save_logits', 'train')
  return config
