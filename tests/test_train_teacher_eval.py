"""Teacher-student agreement on the eval split: the jitted sums against numpy, and the
teacher's eval rows computed once per run, split over processes, and kept in the workdir."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from tinyvit_jax.data import sources
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import step
from tinyvit_jax.train import teacher_eval


def test_teacher_sums_match_numpy_over_the_unmasked_rows():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(12, 7)).astype(np.float32) * 3
  teacher = softmax(logits + rng.normal(size=(12, 7)) * 3, axis=-1)
  teacher[9:] = softmax(2 * logits[9:], axis=-1)  # padded rows that agree: they must not count
  teacher[0, :3] = 0  # classes the teacher rules out add 0 to KL ...
  teacher[0] /= teacher[0].sum()
  logits[0, 0] = -np.inf  # ... even where the student rules them out too
  teacher = teacher.astype(np.float32)
  mask = np.arange(12) < 9  # the last three rows are padding

  sums = jax.jit(step.teacher_sums)(logits, teacher, mask)

  agree = np.argmax(teacher, -1) == np.argmax(logits, -1)
  log_student = log_softmax(logits.astype(np.float64), -1)
  kl = np.array(
      [np.sum(t[t > 0] * (np.log(t[t > 0]) - s[t > 0])) for t, s in zip(teacher, log_student)])
  assert 0 < agree[mask].sum() < 9 and agree[~mask].all()
  assert float(sums['teacher_agreement']) == agree[mask].sum()
  assert np.isfinite(kl[0]) and kl[0] > 0
  assert float(sums['teacher_kl']) == pytest.approx(kl[mask].sum(), rel=1e-5)
  assert abs(kl[mask].sum() - kl.sum()) > 1e-2


WEIGHTS = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)


def _config(teacher: str, num_examples: int = 10):
  config = config_lib.base_config()
  config.num_classes = 4
  config.data.source = 'synthetic'
  config.data.eval = ml_collections.ConfigDict(
      dict(num_examples=num_examples, num_classes=4, image_size=8, seed=1))
  config.eval_aug.update(image_size=8, crop_pct=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
  config.aug.update(mean=(0.5,) * 3, std=(0.5,) * 3)  # the teacher's inputs, not eval_aug's
  config.eval_batch_size = 4  # 10 images: the last batch is half padding
  config.distill.update(kind='fpd', teacher=teacher, k=2)
  return config


class _FakeTeacher:
  """``make_teacher``'s stand-in, a checkpoint directory whose ``model.json`` records its
  weights hash (or not): its probabilities are a function of each image's channel means,
  and it counts its restores and its calls."""

  def __init__(self, directory: str):
    self.directory, self.restores, self.calls = directory, 0, 0
    os.makedirs(directory)
    self.record('a' * 64)

  def record(self, weights_hash: str | None) -> None:
    """Writes model.json as an export would, with ``weights_hash`` (None: without)."""
    self.hash = weights_hash or self.hash
    meta = dict(format=1, model='fake', kwargs={}, metadata={})
    if weights_hash:
      meta['weights_hash'] = weights_hash
    with open(os.path.join(self.directory, 'model.json'), 'w') as f:
      json.dump(meta, f)

  def make(self, distill, aug, num_classes):
    assert distill.teacher == self.directory and num_classes == 4
    self.restores += 1
    return record.Teacher('fake', self.hash, 4, self.probabilities)

  def probabilities(self, images):
    self.calls += 1
    return jax.nn.softmax(images.mean(axis=(1, 2)) @ WEIGHTS, axis=-1)


def test_teacher_eval_rows_are_kept_and_recognised_without_restoring_the_teacher(
    tmp_path, monkeypatch):
  fake = _FakeTeacher(str(tmp_path / 'teacher'))
  monkeypatch.setattr(factory, 'make_teacher', fake.make)
  config, workdir = _config(fake.directory), str(tmp_path / 'run')
  os.makedirs(workdir)
  source = sources.from_config(config.data, 'eval')
  assert teacher_eval.knows_teacher(config)

  rows = teacher_eval.rows(config, source, workdir)
  # Row i is example i's top-2, its eval image normalised with config.aug's mean and std.
  images = np.stack([source[i]['image'] for i in range(10)]) / 255.0
  expected = softmax(((images - 0.5) / 0.5).mean(axis=(1, 2)) @ WEIGHTS, axis=-1)
  top = np.argsort(-expected, axis=-1)[:, :2]
  assert rows.values.dtype == np.float16 and rows.indices.dtype == np.uint16
  np.testing.assert_array_equal(rows.indices, top)
  np.testing.assert_allclose(rows.values, np.take_along_axis(expected, top, -1), rtol=1e-3)
  assert (fake.restores, fake.calls) == (1, 3)
  assert sorted(os.listdir(workdir)) == [teacher_eval.FILE]  # no temporary file left

  again = teacher_eval.rows(config, source, workdir)  # a restart: the teacher not restored
  assert (fake.restores, fake.calls) == (1, 3)
  np.testing.assert_array_equal(again.values, rows.values)
  fake.record(None)  # a checkpoint that does not record its hash: restored to be hashed
  teacher_eval.rows(config, source, workdir)
  assert (fake.restores, fake.calls) == (2, 3)

  fake.record('b' * 64)  # another teacher's weights
  teacher_eval.rows(config, source, workdir)
  assert (fake.restores, fake.calls) == (3, 6)
  config.distill.k = 3  # other rows
  assert teacher_eval.rows(config, source, workdir).values.shape == (10, 3)
  assert (fake.restores, fake.calls) == (4, 9)
  smaller = _config(fake.directory, num_examples=9)
  assert teacher_eval.rows(smaller, sources.from_config(smaller.data, 'eval'),
                           workdir).values.shape == (9, 2)
  assert (fake.restores, fake.calls) == (5, 12)
  with open(os.path.join(workdir, teacher_eval.FILE), 'wb') as f:
    f.write(b'PK\x03\x04 torn')  # not a whole file: recomputed, not trusted
  np.testing.assert_array_equal(
      teacher_eval.rows(smaller, sources.from_config(smaller.data, 'eval'), workdir).indices,
      top[:9])
  assert fake.calls == 15


def test_the_teacher_eval_split_over_processes_computes_each_row_once(tmp_path):
  """Two processes' shares (computed here one after the other), gathered: the rows of
  one process, each image through the teacher once."""
  fake = _FakeTeacher(str(tmp_path / 'teacher'))
  config = _config(fake.directory)
  config.eval_batch_size = 8  # 4 a process
  source = sources.from_config(config.data, 'eval')
  preprocess = dict(config.eval_aug, mean=(0.5,) * 3, std=(0.5,) * 3)
  teacher = fake.make(config.distill, None, 4)
  shares = [
      teacher_eval.compute_share(teacher, source, preprocess, 8, 2, index, 2) for index in (0, 1)
  ]
  assert [share['mask'].sum() for share in shares] == [6, 4]  # 10 rows: 4 + 2 and 4 + 0
  assert shares[0]['values'].shape == shares[1]['values'].shape == (8, 2)  # gatherable
  gathered = {name: np.stack([share[name] for share in shares]) for name in shares[0]}
  split = teacher_eval.assemble(gathered, 10, 4)
  whole = teacher_eval.compute_share(teacher, source, preprocess, 8, 2, 0, 1)
  one = teacher_eval.assemble({name: value[None] for name, value in whole.items()}, 10, 4)
  np.testing.assert_array_equal(split.values, one.values)
  np.testing.assert_array_equal(split.indices, one.indices)


def test_a_run_without_distillation_has_no_teacher_to_agree_with():
  config = _config('teacher')
  config.distill.eval_teacher = False  # a distilled run that turns the report off
  assert not teacher_eval.knows_teacher(config)
  config.distill.update(eval_teacher=True, kind='none')
  assert not teacher_eval.knows_teacher(config)
