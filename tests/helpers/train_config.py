"""A one-epoch run on the digits, for the training tests: the quickstart's student with its
first two stages only (a conv stage, then one window-attention stage: BatchNorm, MBConv,
patch merging, windows and attention biases are all there), because XLA compiles its train
step in half the time of the four stages' (7 s against 15 s here), and the system tests
compile it for each device and process count they run.

  python -m tinyvit_jax.main --config=tests/helpers/train_config.py --workdir=DIR
  python -m tinyvit_jax.main --config=tests/helpers/train_config.py:ROOT --workdir=DIR

The second reads the image folder ROOT/<class>/<file> instead, for training and eval.
"""
import ml_collections

from configs import quickstart

MODEL_KWARGS = dict(img_size=32, embed_dims=(32, 64), num_heads=(1, 2), depths=(1, 1),
                    window_sizes=(4, 4))


def get_config(folder: str = '') -> ml_collections.ConfigDict:
  config = quickstart.student_config(runlocal=False)
  config.model.kwargs = ml_collections.ConfigDict(MODEL_KWARGS)
  config.model.display_name = 'tiny_vit_2stage_32'
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
