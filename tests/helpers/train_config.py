"""A one-epoch run of the quickstart's student on the digits, for the training tests.

  python -m tinyvit_jax.main --config=tests/helpers/train_config.py --workdir=DIR
  python -m tinyvit_jax.main --config=tests/helpers/train_config.py:ROOT --workdir=DIR

The second reads the image folder ROOT/<class>/<file> instead, for training and eval.
"""
import ml_collections

from configs import quickstart


def get_config(folder: str = '') -> ml_collections.ConfigDict:
  config = quickstart.student_config(runlocal=False)
  if folder:
    config.data.source = 'folder'
    config.data.train = config.data.eval = ml_collections.ConfigDict(dict(root=folder))
  config.epochs = 1
  config.optim.warmup_epochs = 0
  config.checkpoint_every_steps = 5
  config.log_every_steps = 1
  config.record_examples = True
  config.stages = ('train',)
  return config
