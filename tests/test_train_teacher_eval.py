"""Teacher-student agreement on the eval split: the jitted sums against numpy, and the
teacher's eval probabilities computed once per run and kept in the workdir."""
import os

import jax
import ml_collections
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from tinyvit_jax.data import sources
from tinyvit_jax.distill import teacher as teacher_lib
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
  kl = np.array([np.sum(t[t > 0] * (np.log(t[t > 0]) - s[t > 0]))
                 for t, s in zip(teacher, log_student)])
  assert 0 < agree[mask].sum() < 9 and agree[~mask].all()
  assert float(sums['teacher_agreement']) == agree[mask].sum()
  assert np.isfinite(kl[0]) and kl[0] > 0
  assert float(sums['teacher_kl']) == pytest.approx(kl[mask].sum(), rel=1e-5)
  assert abs(kl[mask].sum() - kl.sum()) > 1e-2


WEIGHTS = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)


def _config(num_examples: int = 10):
  config = config_lib.base_config()
  config.num_classes = 4
  config.data.source = 'synthetic'
  config.data.eval = ml_collections.ConfigDict(dict(num_examples=num_examples, num_classes=4,
                                                    image_size=8, seed=1))
  config.eval_aug.update(image_size=8, crop_pct=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
  config.aug.update(mean=(0.5,) * 3, std=(0.5,) * 3)  # the teacher's inputs, not eval_aug's
  config.eval_batch_size = 4  # 10 images: the last batch is half padding
  config.distill.update(kind='fpd', teacher='fake')
  return config


class _FakeTeacher:
  """``make_teacher``'s stand-in: its probabilities are a function of each image's channel
  means, and it counts its calls."""

  def __init__(self):
    self.calls, self.hash = 0, 'a' * 64

  def make(self, distill, aug, num_classes):
    assert distill.teacher == 'fake' and num_classes == 4
    return teacher_lib.Teacher('fake', self.hash, 4, self.probabilities)

  def probabilities(self, images):
    self.calls += 1
    return jax.nn.softmax(images.mean(axis=(1, 2)) @ WEIGHTS, axis=-1)


def test_teacher_eval_is_computed_once_and_recomputed_for_another_teacher_or_split(
    tmp_path, monkeypatch):
  fake = _FakeTeacher()
  monkeypatch.setattr(teacher_lib, 'make_teacher', fake.make)
  config, workdir = _config(), str(tmp_path)
  source = sources.from_config(config.data, 'eval')
  assert teacher_eval.knows_teacher(config)

  rows = teacher_eval.probabilities(config, source, workdir)
  # Row i is example i's, its eval image normalised with config.aug's mean and std.
  images = np.stack([source[i]['image'] for i in range(10)]) / 255.0
  expected = softmax(((images - 0.5) / 0.5).mean(axis=(1, 2)) @ WEIGHTS, axis=-1)
  assert rows.dtype == np.float32 and rows.shape == (10, 4)
  np.testing.assert_allclose(rows, expected, rtol=1e-5)
  assert fake.calls == 3
  assert sorted(os.listdir(workdir)) == [teacher_eval.FILE]  # no temporary file left

  again = teacher_eval.probabilities(config, source, workdir)  # a new run, same workdir
  assert fake.calls == 3
  np.testing.assert_array_equal(again, rows)

  fake.hash = 'b' * 64  # another teacher's weights
  teacher_eval.probabilities(config, source, workdir)
  assert fake.calls == 6
  smaller = _config(num_examples=9)
  assert teacher_eval.probabilities(
      smaller, sources.from_config(smaller.data, 'eval'), workdir).shape == (9, 4)
  assert fake.calls == 9
  with open(os.path.join(workdir, teacher_eval.FILE), 'wb') as f:
    f.write(b'PK\x03\x04 torn')  # not a whole file: recomputed, not trusted
  np.testing.assert_allclose(teacher_eval.probabilities(config, source, workdir), rows)
  assert fake.calls == 12


def test_a_run_without_distillation_has_no_teacher_to_agree_with():
  config = _config()
  config.distill.eval_teacher = False  # a distilled run that turns the report off
  assert not teacher_eval.knows_teacher(config)
  config.distill.update(eval_teacher=True, kind='none')
  assert not teacher_eval.knows_teacher(config)
