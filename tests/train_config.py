"""A one-epoch run of the quickstart's student on the digits, for the training tests.

  python -m tinyvit_jax.main --config=tests/train_config.py --workdir=DIR
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
  config.stages = ('train',)
  return config
