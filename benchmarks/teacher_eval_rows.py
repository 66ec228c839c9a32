"""Teacher eval rows: what keeping the teacher's eval rows as top-k (the store's way)
changes in the student's reported KL(teacher || student) and top-1 agreement.

  python benchmarks/teacher_eval_rows.py --workdir QUICKSTART_WORKDIR

On a finished quickstart (``python -m tinyvit_jax.main --config=configs/quickstart.py
--workdir=DIR``): its teacher and its FPD student's export over the digits' eval split,
the figures once from the teacher's dense float32 probabilities and once from its top-k
rows rebuilt by the store's rule (``targets.dense_targets``), for each k; then the bytes
of the kept rows against dense float32, here and for a 21k-class split of 50,000 images.
"""
import argparse
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import augment
from tinyvit_jax.data import loader
from tinyvit_jax.data import pipeline
from tinyvit_jax.data import sources
from tinyvit_jax.distill import save_pass
from tinyvit_jax.distill import store
from tinyvit_jax.distill import targets
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import step

QUICKSTART = os.path.join(os.path.dirname(__file__), '..', 'configs', 'quickstart.py')
KS = (1, 3, 5, 10)


def dense_rows(workdir: str):
  """(teacher probabilities (N, C) float32, student logits (N, C), the student's config)."""
  config = config_lib.load_recipe(QUICKSTART).get_config().runs.student_fpd
  source = sources.from_config(config.data, 'eval')
  mean, std = record.student_normalisation(config.aug)
  teacher = jax_teacher.from_checkpoint(os.path.join(workdir, 'teacher', 'export'), input_mean=mean,
                                        input_std=std)
  student = model_checkpoint.restore_model(os.path.join(workdir, 'student_fpd', 'export'))
  student.eval()
  sharding = NamedSharding(pipeline.data_mesh(jax.local_devices()), P('data'))
  found = []
  for preprocess, forward in ((dict(config.eval_aug, mean=mean,
                                    std=std), teacher.probabilities), (dict(config.eval_aug),
                                                                       jax.jit(student))):
    eval_augment = augment.make_eval_augment(preprocess)
    rows = np.zeros((len(source), config.num_classes), np.float32)
    for batch in loader.eval_batches(source, global_batch=config.eval_batch_size,
                                     transform=eval_augment.host):
      images = eval_augment.device(jax.device_put(batch['image'], sharding))
      rows[batch['index'][batch['mask']]] = np.asarray(forward(images))[batch['mask']]
    found.append(rows)
  return found[0], found[1], config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True, help='a finished quickstart workdir')
  args = parser.parse_args()
  probabilities, logits, config = dense_rows(args.workdir)
  n, c = probabilities.shape
  mask = np.ones(n, bool)
  dense = jax.tree.map(float, step.teacher_sums(logits, probabilities, mask))
  print(f'quickstart eval split: {n} images, {c} classes; the FPD student against its '
        f'teacher, dense float32: KL {dense["teacher_kl"] / n:.5f} nats, agreement '
        f'{dense["teacher_agreement"] / n:.4f}')
  print(' k | KL from top-k rows | KL error | agreement | bytes/row (dense: 4C = '
        f'{4 * c})')
  for k in KS:
    values, indices, _ = save_pass.top_k_rows(probabilities, k)
    rebuilt = targets.dense_targets(values, indices, c)
    sums = jax.tree.map(float, step.teacher_sums(logits, rebuilt, mask))
    kl = sums['teacher_kl'] / n
    row_bytes = k * (2 + store.index_dtype(c).itemsize)
    mark = ' (the quickstart\'s k)' if k == config.distill.k else ''
    print(f'{k:2d} | {kl:.5f} | {kl - dense["teacher_kl"] / n:+.5f} '
          f'({(kl * n / dense["teacher_kl"] - 1) * 100:+.2f} %) | '
          f'{sums["teacher_agreement"] / n:.4f} | {row_bytes}{mark}')
  n21k, c21k, k21k = 50_000, 21_841, 100
  kept = k21k * (2 + store.index_dtype(c21k).itemsize)
  print(f'21k-class split of {n21k:,} images at k={k21k} (computed): dense float32 '
        f'{n21k * c21k * 4 / 1e9:.2f} GB, top-k rows {n21k * kept / 1e6:.1f} MB '
        f'({kept} B a row, 1/{c21k * 4 / kept:.0f} of dense)')


if __name__ == '__main__':
  main()
