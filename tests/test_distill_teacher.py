"""One way to load a teacher: our checkpoint as the save pass's teacher and as the online
teacher of a student's step, each in its own normalisation, read through a class-index
file; a teacher that cannot run online is refused by name before any work starts; in
bfloat16 it says so in its name, and sharded over devices it gives the same rows."""
import collections
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import save_pass_run as run
from flax import nnx

from tinyvit_jax import errors
from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import losses
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.models import WEIGHTS, create_model
from tinyvit_jax.train import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))
NAME, KWARGS = 'deit_tiny_distilled_patch16_224', dict(num_classes=7, img_size=32)
CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
HALF = dict(mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A distilled DeiT saved twice: as converted (ImageNet's normalisation, from the
  registry) and as a CLIP-normalised teacher (the statistics its model.json records)."""
  root = tmp_path_factory.mktemp('teacher')
  model = create_model(NAME, rngs=nnx.Rngs(3), **KWARGS)
  model_checkpoint.save_model(str(root / 'imagenet'), model, NAME, **KWARGS)
  model_checkpoint.save_model(str(root / 'clip'), model, NAME, **KWARGS,
                              metadata=dict(preprocess=dict(image_size=32, **CLIP)))
  model.eval()
  return root, model


def images_in(stats: dict, seed: int = 0):
  """The same pixels in [0, 1], normalised with ``stats``."""
  pixels = jax.random.uniform(jax.random.key(seed), (4, 32, 32, 3))
  return pixels, (pixels - jnp.asarray(stats['mean'])) / jnp.asarray(stats['std'])


def distill_config(path: str, **extra) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(teacher=path, teacher_adapter='ours', **extra))


def test_checkpoint_teacher_is_the_model_in_eval_mode(saved):
  """Its probabilities are the softmax of the model's eval logits (a distilled DeiT: the
  mean of both heads), and its hash is that of the weights however they were saved."""
  root, model = saved
  loaded = jax_teacher.from_checkpoint(str(root / 'imagenet'))
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  expected = nnx.jit(lambda m, x: jax.nn.softmax(m(x)))(model, images)
  np.testing.assert_allclose(loaded.probabilities(images), expected, atol=1e-6)
  assert (loaded.name, loaded.num_classes) == (NAME, 7)
  hash_of = lambda m: model_checkpoint.weights_hash(nnx.to_pure_dict(nnx.state(m, WEIGHTS)))
  assert loaded.checkpoint_hash == hash_of(model)
  assert hash_of(create_model(NAME, rngs=nnx.Rngs(4), **KWARGS)) != loaded.checkpoint_hash


def test_missing_teacher_checkpoint_names_the_path_and_the_fix(tmp_path):
  with pytest.raises(model_checkpoint.CheckpointError,
                     match=f"'{tmp_path}/nowhere' does not exist.*python -m tinyvit_jax.convert"):
    jax_teacher.from_checkpoint(str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('own', ['imagenet', 'clip'])
def test_a_teacher_sees_the_students_views_in_its_own_normalisation(saved, own):
  """Views normalised for the student (mean = std = 0.5) reach the teacher as the same
  pixels normalised with its own statistics, in the save pass and online alike."""
  root, model = saved
  stats = CLIP if own == 'clip' else dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  pixels, student_views = images_in(HALF)
  expected = model(images_in(stats)[1])
  made = factory.make_teacher(distill_config(str(root / own)), HALF)
  np.testing.assert_allclose(made.probabilities(student_views), jax.nn.softmax(expected), atol=2e-6)
  forward, leaves = jax_teacher.online(distill_config(str(root / own)), HALF,
                                       pipeline.data_mesh(jax.devices()), 7)
  np.testing.assert_allclose(jax.jit(forward)(leaves, student_views), expected, atol=2e-5)
  del pixels


def test_online_teacher_reads_through_a_class_index_file(saved, tmp_path):
  """A 7-class teacher for a 3-class student: its logits at the file's classes, so their
  softmax is renormalised over the student's; without the file it is refused by name."""
  root, model = saved
  index_file = tmp_path / 'classes.txt'
  index_file.write_text('6\n0\n3\n')
  views = images_in(dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))[1]
  mesh = pipeline.data_mesh(jax.devices())
  forward, leaves = jax_teacher.online(
      distill_config(str(root / 'imagenet'), teacher_class_index=str(index_file)), None, mesh, 3)
  np.testing.assert_allclose(forward(leaves, views), model(views)[:, [6, 0, 3]], atol=2e-5)
  with pytest.raises(
      ValueError, match=f'teacher {root}/imagenet has 7 classes and the '
      'student 3.*teacher_class_index'):
    jax_teacher.online(distill_config(str(root / 'imagenet')), None, mesh, 3)


def test_online_fpd_is_soft_cross_entropy_on_the_teachers_softmax():
  """``kind='fpd'`` online: the loss FPD approximates, the teacher's full softmax as the
  target, no labels; from a store at k = C it is the same loss on the stored rows."""
  config = config_lib.base_config()
  config.num_classes = 5
  config.distill.update(kind='fpd', teacher='/a/teacher')
  rng = np.random.default_rng(0)
  outputs, teacher_logits = (
      jnp.asarray(rng.standard_normal((4, 5)) * 2, jnp.float32) for _ in range(2))
  images = jnp.zeros((4, 8, 8, 3))
  made = []

  def device_augment(batch, labels):
    made.append(labels)
    return batch['image'], jax.nn.one_hot(batch['label'], 5) if labels else None

  def loss_of(batch, teacher=None):
    images, targets = student.make_inputs(config, device_augment, teacher)(batch, None)
    return student.make_loss(config)(outputs, targets), images

  loss, seen = loss_of(dict(image=images, label=jnp.arange(4)),
                       teacher=lambda leaves, images: teacher_logits)
  probs = jax.nn.softmax(teacher_logits)
  np.testing.assert_allclose(loss, losses.soft_target_cross_entropy(outputs, probs), rtol=1e-6)
  assert seen is images and made == [False]  # FPD makes no label targets
  order = jnp.argsort(-probs, axis=-1)
  stored = dict(image=images, label=jnp.arange(4), teacher_indices=order,
                teacher_values=jnp.take_along_axis(probs, order, -1).astype(jnp.float16))
  config.distill.from_store = True
  np.testing.assert_allclose(loss_of(stored)[0], loss, rtol=2e-3)


@pytest.mark.parametrize('change, message', [
    (dict(teacher_adapter='timm', teacher_model='resnet18'),
     "teacher_adapter='timm' runs only in the save pass.*from_store=True"),
    (dict(teacher=''), "kind='fpd' needs distill.teacher .* to run online"),
])
def test_a_teacher_that_cannot_run_online_is_refused_by_name(change, message):
  config = config_lib.base_config()
  config.distill.update(**{'kind': 'fpd', 'teacher': '/a/teacher.pth', **change})
  with pytest.raises(ValueError, match=message):
    config_lib.check_config(config)
  config.distill.update(from_store=True, store='/a/store')  # the same teacher, stored
  with pytest.raises(ValueError) as error:  # by the base config's missing data dirs alone
    config_lib.check_config(config)
  assert 'distill' not in str(error.value) and 'data_dir is empty' in str(error.value)


@pytest.mark.parametrize('lines, message', [
    (None, 'has 7 classes and the student 10'),
    ('6\n0\n3\n', 'has 3 lines; the student has 10 classes'),
    ('x\n', 'every line must be one integer'),
])
def test_a_teacher_of_other_classes_is_one_line_from_main(saved, tmp_path, lines, message):
  """What main prints as one ``error:`` line (a ``UserError``), not a traceback."""
  root, _ = saved
  extra = {}
  if lines is not None:
    (tmp_path / 'classes.txt').write_text(lines)
    extra = dict(teacher_class_index=str(tmp_path / 'classes.txt'))
  distill = distill_config(str(root / 'imagenet'), **extra)
  mesh = pipeline.data_mesh(jax.devices())
  for load in (lambda: factory.make_teacher(distill, num_classes=10),
               lambda: jax_teacher.online(distill, None, mesh, 10)):
    with pytest.raises(errors.UserError, match=message) as error:
      load()
    assert '\n' not in str(error.value)


@pytest.mark.slow
def test_a_sharded_teacher_gives_the_replicated_ones_probabilities(tmp_path):
  """On 8 devices: every weight split over them, the same rows to float32 reassociation,
  in the save pass and online (in a jitted step, as the student's); 'auto' shards only
  weights above ``SHARD_ABOVE`` of one device's memory."""
  result = subprocess.run([
      sys.executable,
      os.path.join(HERE, 'helpers', 'sharded_teacher_run.py'),
      str(tmp_path / 'vit')
  ], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu',
                                   PYTHONPATH=os.path.dirname(HERE),
                                   XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert result.returncode == 0, result.stderr[-4000:]
  found = json.loads(result.stdout.strip().splitlines()[-1])
  assert found['devices'] == 8 and found['sharded'] and found['max_abs_diff'] < 1e-6
  assert found['qkv_shape'] == [32, 96] and found['qkv_spec'] == ['None', 'data']
  assert found['qkv_shard_shape'] == [32, 12] and found['replicated_leaves'] == 0
  assert found['auto_sharded_when_weights_are'] == dict(above=True, below=False)
  # Online, in a jitted step: the same placement rule, the leaves carrying it in.
  replicated, leaves = found['online_replicated_leaves']['replicated']
  assert replicated == leaves and found['online_replicated_leaves']['sharded'] == [0, leaves]
  assert found['online_max_abs_diff'] < 1e-6 and found['online_vs_save_pass'] < 1e-6


def dot_dtypes(lowered) -> collections.Counter:
  """How many of a lowered program's matmuls (StableHLO dot_general) give each dtype."""
  return collections.Counter(
      re.findall(r'stablehlo\.dot_general .*-> tensor<(?:\d+x)*(\w+)>', lowered.as_text()))


def test_a_bfloat16_teacher_computes_in_bfloat16_and_says_so(saved, tmp_path):
  """Its compiled forward multiplies in bfloat16 (the blocks' 4 matmuls of 12 at least;
  the float32 one has none), in the save pass and online; its float32 softmax gives other
  rows, close to the float32 ones, so its name records the dtype and a store saved with
  one is refused to the other."""
  root, _ = saved
  plain = factory.make_teacher(distill_config(str(root / 'clip')))
  half = factory.make_teacher(distill_config(str(root / 'clip'), teacher_dtype='bfloat16'))
  assert (plain.name, half.name) == (NAME, f'{NAME}@bfloat16')
  assert plain.checkpoint_hash == half.checkpoint_hash  # the same weights
  views = images_in(HALF)[1]
  lowered = {made: dot_dtypes(jax.jit(made.probabilities).lower(views)) for made in (plain, half)}
  mesh = pipeline.data_mesh(jax.devices())
  for dtype in ('float32', 'bfloat16'):
    forward, leaves = jax_teacher.online(distill_config(str(root / 'clip'), teacher_dtype=dtype),
                                         HALF, mesh, 7)
    lowered[dtype] = dot_dtypes(jax.jit(forward).lower(leaves, views))
  for dtypes in (lowered[plain], lowered['float32']):
    assert dtypes['f32'] >= 12 * 4 and dtypes['bf16'] == 0, dtypes
  for dtypes in (lowered[half], lowered['bfloat16']):
    assert dtypes['bf16'] >= 12 * 4, dtypes
  probs = half.probabilities(views)
  assert probs.dtype == jnp.float32
  assert np.abs(probs - plain.probabilities(views)).max() > 1e-4  # rounded otherwise
  np.testing.assert_allclose(probs, plain.probabilities(views), atol=2e-2)
  path = str(tmp_path / 'store')  # as a float32 save pass leaves it, without its rows
  store.LogitStore.create(path, run.student_fields(teacher=plain, num_classes=None))
  with pytest.raises(store.IncompatibleStore, match=f"teacher_name: store '{NAME}', this "
                     f"save '{NAME}@bfloat16'"):
    run.save(path, teacher=half)
