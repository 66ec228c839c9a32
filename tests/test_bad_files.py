"""Bad files to the CLIs (#19 item 5): each answers in one ``error:`` line naming the path
and what it expected, never a traceback. The CLIs run in-process where they return a code
(convert, predict); main and preview once each in a subprocess."""
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest
import torch

from tinyvit_jax import convert
from tinyvit_jax import model_checkpoint
from tinyvit_jax import predict
from tinyvit_jax import preview
from tinyvit_jax.distill.teachers import factory
from tinyvit_jax.models import create_model
from tinyvit_jax.train import config as config_lib
from tinyvit_jax.train import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = 'deit_tiny_patch16_224'
KWARGS = dict(img_size=32, num_classes=3)


@pytest.fixture(scope='module')
def good(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('good') / 'ckpt')
  model_checkpoint.save_model(directory, create_model(MODEL, **KWARGS), MODEL, **KWARGS)
  return directory


def _write(path, data: bytes):
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def _checkpoint_with(good, tmp_path, change):
  directory = str(tmp_path / 'ckpt')
  shutil.copytree(good, directory)
  change(directory)
  return directory


# Files where a state_dict file is expected.
BAD_FILES = {
    'random.pth': lambda tmp: _write(tmp / 'random.pth', os.urandom(1000)),
    'random.safetensors': lambda tmp: _write(tmp / 'random.safetensors', os.urandom(1000)),
    'empty.pth': lambda tmp: _write(tmp / 'empty.pth', b''),
    'empty.safetensors': lambda tmp: _write(tmp / 'empty.safetensors', b''),
    'not a dict': lambda tmp: torch.save(torch.zeros(3), tmp / 't.pth') or str(tmp / 't.pth'),
    'dict of strings': lambda tmp: torch.save({'a': 'b'}, tmp / 's.pth') or str(tmp / 's.pth'),
    'directory': lambda tmp: str(tmp),
}

# Directories where one of our checkpoints is expected.
BAD_DIRS = {
    'empty dir':
        lambda good, tmp: str(tmp),
    'unrelated files':
        lambda good, tmp: os.path.dirname(_write(tmp / 'notes.txt', b'hi')),
    'a file':
        lambda good, tmp: _write(tmp / 'w.pth', os.urandom(100)),
    'truncated model.json':
        lambda good, tmp: _checkpoint_with(
            good, tmp, lambda d: _write(f'{d}/model.json', b'{"format": 1, "mo')),
    'bytes model.json':
        lambda good, tmp: _checkpoint_with(good, tmp, lambda d: _write(
            f'{d}/model.json', os.urandom(300))),
    'list model.json':
        lambda good, tmp: _checkpoint_with(good, tmp, lambda d: _write(
            f'{d}/model.json', b'[1, 2]')),
    'unknown model':
        lambda good, tmp: _checkpoint_with(
            good, tmp, lambda d: _write(
                f'{d}/model.json',
                json.dumps(dict(format=1, model='nope_net', kwargs={})).encode())),
    'no state':
        lambda good, tmp: _checkpoint_with(good, tmp, lambda d: shutil.rmtree(f'{d}/state')),
    'garbage state':
        lambda good, tmp: _checkpoint_with(good, tmp, _scramble_state),
    'other shapes':
        lambda good, tmp: _checkpoint_with(
            good, tmp, lambda d: _write(
                f'{d}/model.json',
                json.dumps(dict(format=1, model=MODEL, kwargs=dict(KWARGS, num_classes=5))).encode(
                ))),
}


def _scramble_state(directory):
  for root, _, files in os.walk(f'{directory}/state'):
    for name in files:
      _write(os.path.join(root, name), os.urandom(100))


def assert_one_error_line(stderr: str, path: str):
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert 'Traceback' not in stderr
  assert len(lines) == 1 and lines[0].startswith('error: '), stderr
  assert path.rstrip('/') in lines[0] and 'expected' in lines[0], lines[0]


def assert_one_line(error: Exception, path: str):
  assert '\n' not in str(error) and path.rstrip('/') in str(error) and 'expected' in str(error)


@pytest.mark.parametrize('case', BAD_FILES)
def test_convert_from_a_bad_file(case, tmp_path, capsys):
  path = BAD_FILES[case](tmp_path)
  code = convert.run(['--model', MODEL, '--from', path, '--out', str(tmp_path / 'out')])
  assert code != 0
  assert_one_error_line(capsys.readouterr().err, path)
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case', BAD_DIRS)
@pytest.mark.parametrize('cli', ['convert', 'predict'])
def test_a_bad_checkpoint_dir(cli, case, good, tmp_path, capsys):
  path = BAD_DIRS[case](good, tmp_path)
  if cli == 'convert':
    code = convert.run(
        ['--model', MODEL, '--from', path, '--to-timm',
         str(tmp_path / 'w.safetensors')])
  else:
    code = predict.run(['--checkpoint', path, _write(tmp_path / 'x.png', b'')])
  assert code != 0
  assert_one_error_line(capsys.readouterr().err, path)


@pytest.mark.parametrize('case', ['empty dir', 'a file', 'truncated model.json', 'garbage state'])
def test_init_checkpoint_and_teacher_dirs(case, good, tmp_path):
  """What main prints for --config.init.checkpoint and --config.distill.teacher (ours)."""
  path = BAD_DIRS[case](good, tmp_path)
  with pytest.raises(model_checkpoint.CheckpointError) as error:
    pretrained.load_into(create_model(MODEL, **KWARGS), path)
  assert_one_line(error.value, path)
  with pytest.raises(model_checkpoint.CheckpointError) as error:
    factory.make_teacher(ml_collections.ConfigDict(dict(teacher=path)))
  assert_one_line(error.value, path)


@pytest.mark.parametrize('case', ['random.pth', 'empty.safetensors', 'directory'])
def test_timm_teacher_file(case, tmp_path):
  path = BAD_FILES[case](tmp_path)
  distill = ml_collections.ConfigDict(
      dict(teacher=path, teacher_adapter='timm', teacher_model='resnet18'))
  with pytest.raises(model_checkpoint.CheckpointError) as error:
    factory.make_teacher(distill)
  assert_one_line(error.value, path)


def test_main_turns_a_bad_checkpoint_into_one_line(tmp_path):
  """main's one catch, through its cheapest way in: the save pass's teacher (the stage
  starts by reading it). init.checkpoint raises the same error (above)."""
  path = BAD_FILES['random.pth'](tmp_path)
  result = subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.main', '--config=tests/helpers/train_config.py',
      f'--workdir={tmp_path / "run"}', '--config.distill.kind=fpd',
      '--config.distill.from_store=True', f'--config.distill.teacher={path}',
      "--config.stages=('save_logits',)"
  ], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode != 0
  assert_one_error_line(_errors_only(result.stderr), path)


def _errors_only(stderr: str) -> str:
  """stderr without absl's and JAX's log lines (``W0101 ...``, warnings)."""
  return '\n'.join(line for line in stderr.splitlines()
                   if line.startswith(('error:', 'Traceback')) or 'Error' in line)


def test_preview_picks_a_run_of_a_recipe_of_several():
  recipe = config_lib.load_recipe(os.path.join(REPO, 'configs', 'quickstart.py')).get_config()
  teacher = preview.pick_run(recipe, 'teacher')
  assert teacher.data.args.to_dict() == recipe.runs.teacher.data.train.to_dict()
  assert teacher.aug.to_dict() == recipe.runs.teacher.aug.to_dict()
  with pytest.raises(config_lib.ConfigError, match=r'--run=nope is none of them'):
    preview.pick_run(recipe, 'nope')
  digits = config_lib.load_recipe(os.path.join(REPO, 'configs', 'preview_digits.py'))
  with pytest.raises(config_lib.ConfigError, match='drop --run=teacher'):
    preview.pick_run(digits.get_config(), 'teacher')


def test_preview_of_a_recipe_of_several_names_its_runs():
  result = subprocess.run(
      [sys.executable, '-m', 'tinyvit_jax.preview', '--config=configs/quickstart.py'], cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: configs/quickstart.py: several runs (teacher, student_fpd, student_labels); '
      'pick one with --run=NAME.')
