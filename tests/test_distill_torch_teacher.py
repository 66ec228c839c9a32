"""Teachers from timm and PyTorch in the save pass: their stores hold what the torch model
gives on the student's augmented views, a JAX conversion of the same weights writes the
same store, class-index mapping leaves the unmapped mass to the tail, and bad input is
named.

Saves use ``save_pass_run`` (150 synthetic 32x32 examples, the whole augmentation recipe
with Mixup/CutMix, k = 5, chunks of 32 rows), for one epoch.
"""
import os

import jax
import numpy as np
import pytest
import timm
import torch
from flax import nnx

from tinyvit_jax.models import timm_weights
from tinyvit_jax import model_checkpoint
from tinyvit_jax.data import pipeline
from tinyvit_jax.distill import store
from tinyvit_jax.distill import student
from tinyvit_jax.distill import targets
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.distill.teachers import jax_teacher
from tinyvit_jax.distill.teachers import record
from tinyvit_jax.distill.teachers import torch_teacher
from tinyvit_jax.models import create_model
from tinyvit_jax.train import config as config_lib

import save_pass_run as run

EPOCHS = 1
# A student normalisation other than timm's (ImageNet), so the adapter must re-normalise.
HALF_AUG = dict(run.AUG, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 0.3))


def random_timm_model(name: str, seed: int = 0, **kwargs):
  """A seeded random-init timm model over ``run.CLASSES`` classes, its classifier scaled
  up so its softmaxes are peaked (no near-ties for top-k to order by rounding)."""
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, num_classes=run.CLASSES, **kwargs)
  with torch.no_grad():
    for parameter in model.get_classifier().parameters():
      parameter.mul_(20)
  return model.eval()


def saved_timm_model(tmp_path, name: str, **kwargs):
  model = random_timm_model(name, **kwargs)
  path = str(tmp_path / f'{name}.pth')
  torch.save(model.state_dict(), path)
  return model, path


def store_rows(path: str) -> tuple:
  values, indices, example = store.LogitStore.open(path).read(0, 0, run.N)
  return values.astype(np.float32), indices, example


def test_timm_store_holds_the_timm_models_top_k_on_our_augmented_views(tmp_path):
  """The student's batches read from the store carry the top-k that the timm model, run
  directly (NCHW, its own normalisation of the un-normalised views), gives on that
  batch's augmented images: indices equal, probabilities within 1e-3."""
  model, checkpoint = saved_timm_model(tmp_path, 'resnet18')
  teacher = torch_teacher.from_timm('resnet18', checkpoint, input_mean=HALF_AUG['mean'],
                                    input_std=HALF_AUG['std'])
  assert teacher.name == 'timm:resnet18' and teacher.num_classes == run.CLASSES
  path = str(tmp_path / 'store')
  run.save(path, teacher=teacher, aug_config=HALF_AUG, epochs=EPOCHS)
  hook = student.StoreTargets(path, run.student_fields(aug_config=HALF_AUG))
  steps = pipeline.make_input_pipeline(run.source(), HALF_AUG, seed=run.SEED, global_batch=50,
                                       host_hook=hook, num_steps=3)
  mean, std = np.asarray(HALF_AUG['mean']), np.asarray(HALF_AUG['std'])
  timm_mean, timm_std = np.asarray(model.pretrained_cfg['mean']), np.asarray(
      model.pretrained_cfg['std'])
  for batch in steps.batches:
    images = np.asarray(steps.device_augment(batch)[0], np.float64)
    pixels = images * std + mean
    nchw = torch.from_numpy(((pixels - timm_mean) / timm_std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      direct = torch.softmax(model(nchw.float()), dim=-1)
    values, indices = torch.topk(direct, run.K)
    np.testing.assert_array_equal(batch['teacher_indices'], indices.numpy())
    np.testing.assert_allclose(np.asarray(batch['teacher_values'], np.float32), values.numpy(),
                               atol=1e-3)


def test_jax_conversion_of_the_same_weights_writes_the_same_store(tmp_path):
  """A tiny DeiT at 32 px through the timm adapter, and the same weights converted into
  our model (``timm_weights.load_timm_state_dict``) through ``jax_teacher.from_checkpoint``: equal
  top-k indices and values within float16 rounding, at every position."""
  name, kwargs = 'deit_tiny_patch16_224', dict(img_size=32)
  timm_model, checkpoint = saved_timm_model(tmp_path, name, **kwargs)
  ours = create_model(name, num_classes=run.CLASSES, rngs=nnx.Rngs(0), **kwargs)
  timm_weights.load_timm_state_dict(ours, timm_model.state_dict())
  model_checkpoint.save_model(str(tmp_path / 'ours'), ours, name, num_classes=run.CLASSES, **kwargs)
  run.save(str(tmp_path / 'timm'), teacher=torch_teacher.from_timm(name, checkpoint, **kwargs),
           epochs=EPOCHS)
  run.save(str(tmp_path / 'jax'), teacher=jax_teacher.from_checkpoint(str(tmp_path / 'ours')),
           epochs=EPOCHS)
  timm_values, timm_indices, timm_examples = store_rows(str(tmp_path / 'timm'))
  jax_values, jax_indices, jax_examples = store_rows(str(tmp_path / 'jax'))
  np.testing.assert_array_equal(timm_examples, jax_examples)
  np.testing.assert_array_equal(timm_indices, jax_indices)
  np.testing.assert_allclose(timm_values, jax_values, rtol=2**-10, atol=2**-24)


def test_a_mapped_teacher_leaves_the_unmapped_mass_to_the_tail(tmp_path):
  """12 teacher classes read as 10 student classes through a class-index file: rows are
  the teacher's gathered probabilities, summing to 1 minus the unmapped classes' mass,
  and the dense rebuild spreads what the top-k leave over the other classes."""
  mapping = [11, 0, 3, 2, 9, 5, 6, 7, 1, 4]  # teacher classes 8 and 10 unmapped
  index_file = tmp_path / 'classes.txt'
  index_file.write_text(''.join(f'{c}\n' for c in mapping))
  full = run.linear_teacher()
  mapped = record.map_classes(full, str(index_file))
  assert mapped.num_classes == 10 and mapped.name.startswith('linear0+classes:classes.txt:')
  assert mapped.checkpoint_hash == full.checkpoint_hash
  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  teacher_rows = np.asarray(full.probabilities(images))
  rows = np.asarray(mapped.probabilities(images))
  np.testing.assert_array_equal(rows, teacher_rows[:, mapping])
  np.testing.assert_allclose(rows.sum(axis=1), 1 - teacher_rows[:, [8, 10]].sum(axis=1), rtol=1e-6)
  values, indices = jax.lax.top_k(rows, 3)
  dense = np.asarray(targets.dense_targets(values, indices, 10))
  np.testing.assert_allclose(dense.sum(axis=1), 1, rtol=1e-6)
  tail = np.ones_like(dense, bool)
  np.put_along_axis(tail, np.asarray(indices), False, axis=1)
  np.testing.assert_allclose(dense[tail].reshape(8, 7),
                             np.repeat((1 - np.asarray(values).sum(1, keepdims=True)) / 7, 7, 1),
                             rtol=1e-6)
  record.check_classes(mapped, 10)


def test_a_class_count_mismatch_without_mapping_is_refused():
  with pytest.raises(
      ValueError, match='linear0 has 12 classes and the student 10.*'
      'distill.teacher_class_index'):
    record.check_classes(run.linear_teacher(), 10)


@pytest.mark.parametrize('lines, message', [
    ('1\n2\n', 'has 2 lines; the student has 3 classes'),
    ('1\n12\n3\n', "line 2 holds 12, outside the teacher's 12 classes"),
    ('1\nx\n3\n', 'every line must be one integer'),
    ('4\n1\n4\n', r'teacher class 4 is on lines \[1, 3\]'),
])
def test_a_bad_class_index_file_is_named(tmp_path, lines, message):
  index_file = tmp_path / 'classes.txt'
  index_file.write_text(lines)
  with pytest.raises(ValueError, match=message):
    record.map_classes(run.linear_teacher(), str(index_file), num_classes=3)


def test_a_missing_checkpoint_file_names_the_path(tmp_path):
  with pytest.raises(model_checkpoint.CheckpointError,
                     match=f'{tmp_path}/nowhere.pth: does not exist'):
    torch_teacher.from_timm('resnet18', str(tmp_path / 'nowhere.pth'))
  with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/nowhere.txt' does not exist"):
    record.map_classes(run.linear_teacher(), str(tmp_path / 'nowhere.txt'))


def test_a_checkpoint_of_another_head_size_is_named(tmp_path):
  _, checkpoint = saved_timm_model(tmp_path, 'resnet18')
  with pytest.raises(
      ValueError, match=r'does not fit the teacher timm:resnet18.*num_classes'
      r'(.|\n)*fc.weight'):
    torch_teacher.from_timm('resnet18', checkpoint, num_classes=7)


@pytest.mark.parametrize('import_path, message', [
    ('no_such_package.models:make', "'no_such_package.models:make' does not resolve: module "
     "'no_such_package.models' cannot be imported"),
    ('tinyvit_jax.convert:no_such_factory', "has no 'no_such_factory'"),
    ('tinyvit_jax.convert', "must look like 'package.module:factory'"),
])
def test_an_import_path_that_does_not_resolve_is_named(import_path, message):
  with pytest.raises((ImportError, ValueError), match=message):
    torch_teacher.from_torch_module(import_path, num_classes=run.CLASSES, mean=(0.5,) * 3,
                                    std=(0.5,) * 3)


class _PooledLinear(torch.nn.Module):
  """A seeded linear map of 4x4-pooled pixels; its ``nan_at_call``-th call (from 0) gives
  NaN logits for the batch's first row."""

  def __init__(self, nan_at_call=None):
    super().__init__()
    torch.manual_seed(0)
    self.fc = torch.nn.Linear(8 * 8 * 3, run.CLASSES)
    self.nan_at_call, self.calls = nan_at_call, 0

  def forward(self, images):
    logits = self.fc(torch.nn.functional.avg_pool2d(images, 4).flatten(1))
    if self.calls == self.nan_at_call:
      logits[0, 0] = float('nan')
    self.calls += 1
    return logits


def pooled_linear(nan_at_call=None):
  return _PooledLinear(nan_at_call)


def torch_module_teacher(**kwargs):
  return torch_teacher.from_torch_module(f'{__name__}:pooled_linear', num_classes=run.CLASSES,
                                         mean=(0.5,) * 3, std=(0.5,) * 3, **kwargs)


def test_a_nan_torch_teacher_stops_naming_the_batch_and_earlier_chunks_stay_valid(tmp_path):
  """The 4th batch (positions 96..127) gets a NaN: the save stops naming it with chunks
  0-2 committed; a rerun with the sound module (same weights, so the same name and hash)
  resumes there and gives an uninterrupted save's bytes."""
  reference = str(tmp_path / 'reference')
  run.save(reference, teacher=torch_module_teacher(), epochs=EPOCHS)
  path = str(tmp_path / 'store')
  with pytest.raises(
      FloatingPointError, match=r'epoch 0: .* positions 96\.\.127 \(first at '
      r'position 96, example \d+\)'):
    run.save(path, teacher=torch_module_teacher(nan_at_call=3), epochs=EPOCHS)
  logits = store.LogitStore.open(path)
  assert logits.epochs_done == [] and logits.missing_chunks(0) == [3, 4]
  run.save(path, teacher=torch_module_teacher(), epochs=EPOCHS)
  for chunk in range(5):
    with open(logits.chunk_path(0, chunk),
              'rb') as got, open(store.LogitStore.open(reference).chunk_path(0, chunk),
                                 'rb') as want:
      assert got.read() == want.read()


def test_make_teacher_builds_each_adapter_from_config_keys(tmp_path):
  """The config keys proposed for main: 'timm' and 'torch' adapters, with a class-index
  file, give the teachers the functions give."""
  _, checkpoint = saved_timm_model(tmp_path, 'resnet18')
  index_file = tmp_path / 'classes.txt'
  index_file.write_text('\n'.join(map(str, range(10))))
  timm_config = dict(teacher_adapter='timm', teacher=checkpoint, teacher_model='resnet18',
                     teacher_class_index=str(index_file))
  made = factory.make_teacher(_Config(timm_config), dict(mean=HALF_AUG['mean'],
                                                         std=HALF_AUG['std']))
  direct = torch_teacher.from_timm('resnet18', checkpoint, input_mean=HALF_AUG['mean'],
                                   input_std=HALF_AUG['std'])
  assert made.num_classes == 10 and made.name.startswith('timm:resnet18+classes:')
  assert made.checkpoint_hash == direct.checkpoint_hash
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  np.testing.assert_allclose(made.probabilities(images),
                             np.asarray(direct.probabilities(images))[:, :10], rtol=1e-6)
  torch_config = dict(teacher_adapter='torch', teacher='',
                      teacher_model=f'{__name__}:pooled_linear', teacher_num_classes=run.CLASSES,
                      teacher_mean=(0.5,) * 3, teacher_std=(0.5,) * 3)
  made = factory.make_teacher(_Config(torch_config))
  assert made.name == f'torch:{__name__}:pooled_linear'
  assert made.checkpoint_hash == torch_module_teacher().checkpoint_hash
  with pytest.raises(ValueError, match="teacher_adapter='onnx'"):
    factory.make_teacher(_Config(dict(teacher_adapter='onnx')))


class _Config(dict):
  """The attribute access of a ConfigDict section."""
  __getattr__ = dict.__getitem__


def test_module_imports_neither_torch_nor_timm():
  """torch and timm are optional: importing the adapters module must not need them."""
  import subprocess
  import sys
  code = ('import sys; import tinyvit_jax.distill.teachers.torch_teacher; '
          'assert "torch" not in sys.modules and "timm" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True, env=dict(os.environ,
                                                                    JAX_PLATFORMS='cpu'))


@pytest.mark.parametrize('adapter, device, shares',
                         [('timm', 'cuda:0', True), ('torch', 'cuda', True), ('timm', 'cpu', False),
                          ('ours', 'cuda', False)])
def test_jax_allocates_on_demand_beside_a_torch_teacher_on_the_gpu(adapter, device, shares,
                                                                   monkeypatch):
  monkeypatch.delenv('XLA_PYTHON_CLIENT_PREALLOCATE', raising=False)
  teacher, student = config_lib.base_config(), config_lib.base_config()
  student.distill.update(teacher_adapter=adapter, teacher_device=device)
  torch_teacher.share_gpu_with_jax([teacher.distill, student.distill])
  assert os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE') == ('false' if shares else None)


def test_the_users_own_preallocation_setting_wins(monkeypatch):
  monkeypatch.setenv('XLA_PYTHON_CLIENT_PREALLOCATE', 'true')
  config = config_lib.base_config()
  config.distill.update(teacher_adapter='timm', teacher_device='cuda')
  torch_teacher.share_gpu_with_jax([config.distill])
  assert os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] == 'true'
