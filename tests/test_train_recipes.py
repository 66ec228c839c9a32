"""Every recipe builds a valid config, full size and ``:runlocal``, once given what it
reads (data, a teacher); ``--data_dir`` points each source at its files; one DeiT recipe
runs, and the FPD recipe's runlocal (ViT teacher, save pass, student)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tinyvit_jax import normalisation
from tinyvit_jax import target
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import teacher_eval
from tinyvit_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    'quickstart': [''],
    'fpd_21k': ['variant=5m', 'variant=11m', 'variant=21m'],
    'finetune_1k': ['variant=5m', 'variant=21m,res=384', 'variant=21m,res=512'],
    'in1k': ['variant=5m', 'variant=11m', 'variant=21m'],
    'deit': [
        f'size={s},distill={d}' for s in ('tiny', 'small', 'base') for d in ('none', 'soft', 'hard')
    ] + ['distill=hard,store'],
}


def load_recipe(name):
  return config_lib.load_recipe(os.path.join(REPO, 'configs', f'{name}.py'))


def runs_of(config) -> list:
  return [config.runs[name] for name in config.run_order] if 'runs' in config else [config]


@pytest.mark.parametrize('name, arg', [(n, a) for n, args in RECIPES.items() for a in args])
@pytest.mark.parametrize('runlocal', [False, True])
def test_recipe_builds_a_valid_config(name, arg, runlocal):
  arg = ','.join(filter(None, [arg, 'runlocal' if runlocal else '']))
  recipe = load_recipe(name)
  assert f'configs/{name}.py' in recipe.__doc__  # the docstring gives the command
  for run in runs_of(recipe.get_config(arg)):
    if run.distill.kind != 'none' and not run.distill.teacher:
      with pytest.raises(ValueError, match='needs distill.teacher'):  # the user gives it
        config_lib.check_config(run)
      run.distill.teacher = '/the/teacher/export'
    if run.data.source in config_lib.DATA_PATH_KEYS:  # the user gives it (--data_dir)
      with pytest.raises(ValueError, match=r'data\.train\.\w+ is empty'):
        config_lib.check_config(run)
      assert config_lib.fill_data_dir(run, '/the/data')
    config_lib.check_config(run)


@pytest.mark.parametrize('name', ['fpd_21k', 'finetune_1k', 'in1k', 'deit'])
@pytest.mark.parametrize('backend, dtype', [('cpu', 'float32'), ('gpu', 'bfloat16'),
                                            ('tpu', 'bfloat16')])
def test_imagenet_recipes_compute_in_bfloat16_on_accelerators_only(name, backend, dtype):
  with target.compiling_for(target.Target(backend)):
    for run in runs_of(load_recipe(name).get_config()):
      assert run.dtype == 'auto' and config_lib.compute_dtype(run) == dtype


@pytest.mark.parametrize('backend, dtype', [('cpu', 'float32'), ('gpu', 'bfloat16')])
def test_the_fpd_recipes_teacher_computes_in_bfloat16_on_accelerators_only(backend, dtype):
  fpd = load_recipe('fpd_21k').get_config()
  with target.compiling_for(target.Target(backend)):
    assert target.compute_dtype(fpd.distill.teacher_dtype) == dtype
  assert config_lib.base_config().distill.teacher_dtype == 'float32'  # other recipes


def test_the_trainer_builds_the_model_in_the_resolved_dtype():
  config = load_recipe('in1k').get_config('runlocal')
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

  def logits_dtype():  # shapes only: nothing is initialised or computed
    return nnx.eval_shape(lambda x: trainer.build_model(config)(x), images).dtype

  assert logits_dtype() == jnp.float32  # this CPU
  with target.compiling_for(target.Target('gpu')):
    assert logits_dtype() == jnp.bfloat16


def test_quickstart_computes_in_float32_everywhere():
  with target.compiling_for(target.Target('gpu')):
    for run in runs_of(load_recipe('quickstart').get_config()):
      assert config_lib.compute_dtype(run) == 'float32'


@pytest.mark.parametrize(
    'source,key,train,eval_',
    [
        ('tfds', 'data_dir', '/d', '/d'),  # a tfds data_dir holds every split
        ('array_record', 'directory', '/d/train', '/d/val'),  # a prepared folder holds one
        ('folder', 'root', '/d/train', '/d/val')
    ])
def test_data_dir_points_each_source_at_its_files(source, key, train, eval_):
  config = config_lib.base_config()
  config.data.source = source
  assert config_lib.fill_data_dir(config, '/d') == [f'data.train.{key}', f'data.eval.{key}']
  assert (config.data.train[key], config.data.eval[key]) == (train, eval_)
  config.data.eval[key] = '/mine'
  config.data.train[key] = ''
  config_lib.fill_data_dir(config, '/e')  # a path the user gave is kept
  assert (config.data.train[key],
          config.data.eval[key]) == ('/e' if source == 'tfds' else '/e/train', '/mine')


def test_data_dir_does_not_fit_a_recipe_without_files():
  run = load_recipe('quickstart').get_config().runs.teacher
  assert config_lib.fill_data_dir(run, '/d') == [] and run.data.source == 'digits'


def test_a_config_that_is_not_a_training_run_is_named():
  config = load_recipe('preview_digits').get_config()
  with pytest.raises(config_lib.ConfigError, match='the config is not a training run: it '
                     'lacks .*base_config'):
    config_lib.runs(config)


def test_recipe_arguments_are_checked():
  with pytest.raises(ValueError, match="Unknown recipe argument 'varient'"):
    load_recipe('in1k').get_config('varient=5m')
  with pytest.raises(ValueError, match="variant='7m'"):
    load_recipe('fpd_21k').get_config('variant=7m')


def test_the_paper_numbers_are_in_the_recipes():
  fpd = load_recipe('fpd_21k').get_config('variant=21m')
  assert (fpd.epochs, fpd.batch_size, fpd.optim.lr, fpd.optim.weight_decay) == (90, 4096, 2e-3,
                                                                                0.01)
  assert (fpd.distill.k, fpd.num_classes, fpd.model.kwargs.drop_path_rate) == (100, 21841, 0.1)
  fine = load_recipe('finetune_1k').get_config('variant=21m')
  assert (fine.epochs, fine.optim.lr, fine.optim.weight_decay, fine.optim.layer_decay,
          fine.optim.freeze_bn) == (30, 5e-4, 1e-8, 0.8, True)
  deit = load_recipe('deit').get_config('size=small,distill=hard')
  assert deit.model.name == 'deit_small_distilled_patch16_224'
  assert (deit.distill.alpha, deit.distill.tau, deit.optim.lr) == (0.5, 1.0, 1e-3)
  assert (deit.data.num_repeats, deit.data.repeat_stride) == (3, 64)


def test_impossible_values_are_all_named_with_their_fix():
  config = config_lib.base_config()
  config.update(epochs=0, dtype='float16')
  config.data.update(num_repeats=0)
  config.optim.ema_decay = 1.0
  config.distill.update(kind='fpd', from_store=True, store='gs://bucket/store',
                        teacher_dtype='float16', teacher_sharding='fsdp')
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.check_config(config)
  for problem in ('epochs=0 must be a positive integer', "dtype='float16'",
                  'data.num_repeats=0 must be a whole number >= 1',
                  'optim.ema_decay=1.0 must be in [0, 1)', "distill.teacher_dtype='float16'",
                  "distill.teacher_sharding='fsdp'",
                  "distill.store='gs://bucket/store': paths go through local file APIs, so "
                  'mount the bucket on every host (gcsfuse --implicit-dirs bucket '
                  '/mnt/gcs/bucket) and give /mnt/gcs/bucket/store'):
    assert problem in str(error.value)


@pytest.mark.parametrize('distill, problem', [
    (dict(views_per_example=2, kind='soft', teacher='/t'),
     'views_per_example=2 bounds a logit store: it needs distill.from_store=True'),
    (dict(views_per_example=31, kind='fpd', from_store=True,
          store='/s'), 'views_per_example=31 exceeds epochs=30'),
    (dict(views_per_example=-1, kind='fpd', from_store=True,
          store='/s'), 'views_per_example=-1 must be a whole number'),
])
def test_a_bound_on_store_views_needs_a_store_and_fits_the_epochs(distill, problem):
  config = config_lib.base_config()
  config.update(epochs=30)
  config.distill.update(distill)
  with pytest.raises(config_lib.ConfigError, match=problem):
    config_lib.check_config(config)


def test_distill_fields_are_checked_only_when_the_run_distils():
  """A 4-class run from the base config: distill.k=10 (and the other distill.* defaults
  or leftovers) mean nothing without distillation; from a store, k is refused."""
  config = config_lib.base_config()
  config.update(num_classes=4)
  config.data.update(source='digits', train=dict(split='train'), eval=dict(split='test'))
  config.distill.update(views_per_example=2, teacher_sharding='fsdp', store='gs://b/s')
  config_lib.check_config(config)
  config.distill.update(kind='fpd', teacher='/t', views_per_example=0, teacher_sharding='auto',
                        store='')
  config_lib.check_config(config)  # online: no store, so no top-k
  config.distill.from_store = True
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.check_config(config)
  assert str(error.value) == ('Impossible config: distill.k=10 must be between 1 and '
                              'num_classes=4.')


@pytest.mark.slow
def test_fpd_runlocal_saves_a_vit_teachers_store_and_trains_its_student(tmp_path):
  """runlocal: a CLIP-normalised ViT, exported untrained, stores its top-k of the
  student's views; the TinyViT-5M student trains from that store (2 steps)."""
  result = subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.main', '--config=configs/fpd_21k.py:variant=5m,runlocal',
      f'--workdir={tmp_path}'
  ], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS='cpu', TQDM_DISABLE='1'))
  assert result.returncode == 0, result.stderr[-4000:]
  teacher = json.loads((tmp_path / 'teacher' / 'export' / 'model.json').read_text())
  assert teacher['metadata']['preprocess']['mean'] == list(normalisation.OPENAI_CLIP_MEAN)
  manifest = json.loads((tmp_path / 'student' / 'logits' / 'manifest.json').read_text())
  assert (manifest['teacher_name'], manifest['epochs_done']) == ('vit_base_patch16_clip_224', [0])
  stages = json.loads((tmp_path / 'student' / 'stages.json').read_text())
  assert stages['save_logits']['top1_agreement'] == 1.0 and stages['train']['steps'] == 2
  # The teacher eval: its export's recorded hash, its top-10 rows (21k's k=100, in small).
  assert 0 <= stages['eval']['teacher_agreement'] <= 1 and stages['eval']['teacher_kl'] > 0
  with np.load(tmp_path / 'student' / teacher_eval.FILE) as kept:
    assert kept['values'].dtype == np.float16 and kept['values'].shape[1] == 10
    assert json.loads(str(kept['made_for']))['teacher_checkpoint_hash'] == (teacher['weights_hash'])
  assert 'tiny_vit_5m_224' in result.stdout and os.path.isdir(tmp_path / 'student' / 'export')


def test_a_wrong_recipe_path_is_named():
  with pytest.raises(FileNotFoundError, match="no recipe file 'configs/nope.py'; see configs/"):
    config_lib.load_recipe('configs/nope.py')


def test_a_bucket_workdir_is_refused_in_one_line_before_anything_is_written(tmp_path):
  """``os.makedirs('gs://b/x')`` would make a local folder named 'gs:': refused instead."""
  result = subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.main', f'--config={REPO}/configs/quickstart.py',
      '--workdir=gs://bucket/runs/qs'
  ], capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: --workdir='gs://bucket/runs/qs': paths go through local file APIs")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('recipe, key, suggested', [
    ('in1k.py', 'optim.lrr', 'Did you mean optim.lr, optim.min_lr, optim?'),
    ('quickstart.py', 'optim.lrr', 'Did you mean runs.student_fpd.optim.lr, '
     'runs.student_labels.optim.lr, runs.teacher.optim.lr?'),
])
def test_a_misspelt_key_names_the_nearest_ones_in_every_run(recipe, key, suggested):
  config = config_lib.load_recipe(os.path.join(REPO, 'configs', recipe)).get_config()
  with pytest.raises(ValueError, match=f"Unknown config key '{key}'. {suggested}"):
    config_lib.check_override_keys(config, [key])
