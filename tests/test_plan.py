"""--plan: a recipe's own stages compiled for a TPU slice on this CPU machine (libtpu, no
TPU), with the formulations the TPU runs, and figures that agree with the model."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tinyvit_jax import chips
from tinyvit_jax import main
from tinyvit_jax import plan
from tinyvit_jax import target
from tinyvit_jax.data import augment
from tinyvit_jax.models import create_model
from tinyvit_jax.models import macs
from tinyvit_jax.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = 'configs/fpd_21k.py:runlocal'  # a ViT teacher's save pass, TinyViT's train and eval
SLICE = 'v5litepod-4'  # v5e:2x2, one host
pytestmark = pytest.mark.skipif(not importlib.util.find_spec('libtpu'),
                                reason='libtpu (the test extra) plans for a TPU')


def _main(*flags, workdir):
  return subprocess.run([
      sys.executable, '-m', 'tinyvit_jax.main', f'--config={RECIPE}', f'--workdir={workdir}',
      f'--plan={SLICE}', *flags
  ], cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        check=False)


@pytest.fixture(scope='module')
def planned(tmp_path_factory):
  """Every stage of the recipe planned once through main: (rows, stdout, workdir)."""
  workdir = tmp_path_factory.mktemp('plan') / 'w'
  rows_path = workdir.parent / 'plan.json'
  result = _main(f'--plan_json={rows_path}', workdir=workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(rows_path) as f:
    return {row['stage']: row for row in json.load(f)}, result.stdout, workdir


def _runs():
  return config_lib.runs(config_lib.load_recipe(RECIPE.split(':')[0]).get_config('runlocal'))


def test_every_stage_compiles_and_fits_and_touches_no_workdir(planned):
  rows, stdout, workdir = planned
  assert set(rows) == {'save_logits', 'train', 'eval'}
  for row in rows.values():
    assert row['status'] == 'fits' and row['accelerator'] == SLICE
    assert row['capacity_gib'] == 16
    assert row['weights_gib'] + row['inputs_gib'] <= row['total_gib'] < row['capacity_gib']
    assert row['headroom_gib'] == pytest.approx(row['capacity_gib'] - row['total_gib'])
    assert row['compile_seconds'] > 0
  assert 'modelled img/s' in stdout.splitlines()[0] and 'error' not in stdout
  assert not workdir.exists()


def test_hbm_holds_the_models_parameters_and_adamws_two_moments(planned):
  rows, _, _ = planned
  student, teacher = _runs()['student'], _runs()['teacher']

  def parameter_bytes(config):
    model = nnx.eval_shape(lambda: create_model(config.model.name, num_classes=config.num_classes,
                                                **config.model.kwargs))
    return sum(p.size * 4 for p in jax.tree.leaves(nnx.state(model, nnx.Param))), model

  student_bytes, _ = parameter_bytes(student)
  teacher_bytes, _ = parameter_bytes(teacher)
  gib = 2**30
  # float32 params, AdamW's mu and nu, replicated; BatchNorm statistics and counters besides.
  assert 3 * student_bytes <= rows['train']['weights_gib'] * gib < 3.05 * student_bytes
  # evaluation reads the params (and the statistics) only; the teacher's replicated weights.
  assert student_bytes <= rows['eval']['weights_gib'] * gib < 1.05 * student_bytes
  assert rows['save_logits']['weights_gib'] * gib == pytest.approx(teacher_bytes)


def test_xla_flops_agree_with_count_macs(planned):
  """XLA's flops per image against 2 x MACs forward (3x that for a train step): above by
  what XLA counts besides the convs and matmuls (norms, activations, softmax, optimiser)."""
  rows, _, _ = planned
  runs = _runs()
  for stage, config, passes in (('train', runs['student'], 3), ('eval', runs['student'], 1),
                                ('save_logits', runs['teacher'], 1)):
    model = nnx.eval_shape(lambda: create_model(config.model.name, num_classes=config.num_classes,
                                                **config.model.kwargs))
    expected = passes * 2 * macs.count_macs(model, config.aug.image_size) / 1e9
    assert rows[stage]['model_gflop_per_image'] == pytest.approx(expected)
    assert expected <= rows[stage]['xla_gflop_per_image'] <= 1.6 * expected, stage
    assert 0 < rows[stage]['mfu'] < 1 and rows[stage]['images_per_second'] > 0


def test_a_tpu_plan_compiles_the_tpu_formulations_and_a_cpu_one_the_cpus(tmp_path):
  """The same stage lowered for the slice and for this CPU: XLA's grouped convolution and
  dot_product_attention for the TPU, the shifted-view depthwise convs (their optimisation
  barriers) and the head-major einsum attention for the CPU."""
  runs = main.check_recipe(
      config_lib.load_recipe(RECIPE.split(':')[0]).get_config('runlocal'), str(tmp_path))
  slice_ = chips.parse(SLICE)

  def lowered(devices, compiled_for):
    with target.compiling_for(compiled_for):
      stage = plan.build_stage('eval', runs['student'], runs=runs, workdir=str(tmp_path),
                               devices=devices, slice_=slice_)
      return stage.fn.lower(*stage.args).as_text()

  tpu = lowered(chips.devices(slice_), target.Target('tpu', device_memory=slice_.hbm_bytes))
  cpu = lowered(jax.devices(), target.local())
  grouped = lambda text: {int(g) for g in re.findall(r'feature_group_count = (\d+)', text)}
  batch_dims = lambda text: set(re.findall(r'batching_dims = (\[[\d, ]*\]) x', text))
  assert max(grouped(tpu)) > 1 and 'optimization_barrier' not in tpu  # depthwise convs
  assert 'stablehlo.convolution' not in cpu and 'optimization_barrier' in cpu
  assert '[0, 2]' in batch_dims(tpu) and '[0, 1]' not in batch_dims(tpu)  # B, heads of BTNH
  assert batch_dims(cpu) == {'[0, 1]'}  # head-major (B, heads, T, hd)


def test_a_tpu_augments_without_pixel_gathers_or_histogram_scatters():
  """The device RandAugment lowered for a TPU: its warp reads blocks of the image and picks
  taps by one-hot matmuls, its histograms and tables are compares; for the CPU, each of a
  warp's 16 taps gathers (1, 1, 3) pixels and each histogram scatters into (3, 256)."""
  device = augment.make_train_augment(image_size=32, rand_augment='rand-m9-mstd0.5-inc1').device
  args = (jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8), jax.ShapeDtypeStruct((4, 2),
                                                                                jnp.uint32), None)

  def lowered(platform):
    with target.compiling_for(target.Target(platform)):
      return jax.jit(lambda *a: device(*a)).lower(*args).as_text()  # a fresh trace each

  def scattered_into(text):
    return set(re.findall(r'"stablehlo.scatter".*?\}\) : \(tensor<([\dx]+)x[a-z]', text, re.S))

  gathered = lambda text: set(re.findall(r'slice_sizes = array<i64: ([\d, ]+)>', text))
  tpu, cpu = lowered('tpu'), lowered('cpu')
  assert '1, 1, 3' in gathered(cpu) and '1, 1, 3' not in gathered(tpu)
  assert '4x3x256' in scattered_into(cpu) and scattered_into(tpu) <= {'4x32x32x3'}


def test_a_stage_too_large_for_the_chip_stops_the_plan_with_its_knobs(tmp_path):
  result = _main('--mode=save_logits', '--config.runs.student.batch_size=4194304',
                 workdir=tmp_path / 'w')
  assert result.returncode == main.PLAN_DOES_NOT_FIT, result.stderr[-3000:]
  last = result.stdout.strip().splitlines()[-1]
  assert re.fullmatch(
      r'error: run student, stage save_logits on v5litepod-4: needs [\d.]+ GiB per chip of '
      r'16\.00 GiB; try a smaller --config\.batch_size for the save pass alone.*', last), last
  assert 'does not fit' in result.stdout


def test_both_ways_the_tpu_compiler_refuses_a_program_for_memory_read_as_does_not_fit():
  """Each message as libtpu printed it here (fpd_21k:variant=5m on v5litepod-8: the save
  pass at 512 a chip, the train step at 512 a chip); any other error is not a fit."""
  temporaries = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for '
                 'HLO temporaries (20.53G) exceeds available HBM (15.75G).')
  assert plan.memory_refusal(temporaries, 0.25) == dict(temp_gib=20.53, total_gib=20.78)
  whole = ('RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran '
           'out of memory in memory space hbm. Used 15.79G of 15.75G hbm. Exceeded hbm capacity '
           'by 43.41M.')
  assert plan.memory_refusal(whole, 0.25) == dict(total_gib=15.79, capacity_gib=15.75)
  assert plan.memory_refusal('INVALID_ARGUMENT: a shape does not divide', 0.25) is None


def test_the_batch_found_to_fit_is_in_the_line_and_the_table():
  row = dict(run='student', stage='train', accelerator='v5litepod-8', status='does not fit',
             batch_per_chip=512, total_gib=15.79, capacity_gib=15.75, knobs='a smaller batch',
             largest_batch_per_chip=480)
  assert plan.problems([row]) == [
      'run student, stage train on v5litepod-8: needs 15.79 GiB per chip of 15.75 GiB (480 '
      'images a chip fit); try a smaller batch'
  ]
  header, _, line = plan.table([row]).splitlines()
  assert 'fits at B/chip' in header and line.split()[5:7] == ['512', '480']
  del row['largest_batch_per_chip']  # no search: no column
  assert 'fits at' not in plan.table([row])


def test_an_unknown_accelerator_is_refused_in_one_line_naming_the_known_ones():
  with pytest.raises(chips.UnknownAccelerator) as error:
    plan.plan_recipe({}, '/nowhere', 'v5litepod-3')
  assert '\n' not in str(error.value) and 'v5litepod-1/4/8/16' in str(error.value)


@pytest.mark.parametrize(
    'planned_batch, compiles, found',
    [
        (8, 4, 64),  # fits: 16, 32, 64, then 128 does not
        (8, 7, 104),  # ... then bisected: 96, 112 (no), 104
        (512, 4, 96),  # does not fit: 256, 128 (no), 64, then 96
        (2048, 3, None),  # three halvings do not reach a batch that fits
    ])
def test_the_largest_batch_search_doubles_or_halves_then_bisects(monkeypatch, planned_batch,
                                                                 compiles, found):
  """On a chip where 105 images fit, compiles stubbed: the search's own logic."""
  tried = []

  def plan_stage(global_batch, slice_):
    del slice_
    tried.append(global_batch // 4)
    return dict(status='fits' if global_batch // 4 <= 105 else 'does not fit')

  monkeypatch.setattr(plan, 'plan_stage', plan_stage)
  config = config_lib.base_config()
  config.batch_size = 4 * planned_batch
  row = dict(batch_per_chip=planned_batch,
             status='fits' if planned_batch <= 105 else 'does not fit')
  assert plan.largest_batch(lambda c: c.batch_size, config, row, chips.parse(SLICE),
                            compiles) == found
  assert len(tried) == compiles and len(set(tried)) == len(tried)
