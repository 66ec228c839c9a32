"""``python -m tinyvit_jax.main`` in subprocesses, and what its runs leave in a workdir or
a store: the helpers of the tests that run the whole system."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from absl import logging

from tinyvit_jax import main
from tinyvit_jax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 22  # 1,437 training digits // 64
# The README's quickstart as the suite runs it: every run, stage and output of
# configs/quickstart.py, at 4 epochs a run instead of 20 and 24.
QUICKSTART_EPOCHS = 4
QUICKSTART = ('--config=configs/quickstart.py',
              *(f'--config.runs.{run}.epochs={QUICKSTART_EPOCHS}'
                for run in ('teacher', 'student_fpd', 'student_labels')))


def main_command(workdir, *overrides, config='tests/helpers/train_config.py'):
  return [
      sys.executable, '-m', 'tinyvit_jax.main', f'--config={config}', f'--workdir={workdir}',
      *overrides
  ]


def environment(devices: int = 1) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TQDM_DISABLE='1')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def run_main(workdir, *overrides, devices: int = 1, check: bool = True,
             config: str = 'tests/helpers/train_config.py'):
  result = subprocess.run(main_command(workdir, *overrides, config=config), cwd=REPO,
                          env=environment(devices), capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f'main failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return result


def step_losses(workdir) -> dict:
  return {row['step']: row['loss'] for row in metrics.read_metrics(workdir) if 'loss' in row}


def resumed_from(workdir) -> int:
  """The step the run that finished ``train`` started from (0: from scratch), as it
  recorded in stages.json."""
  with open(os.path.join(workdir, 'stages.json')) as f:
    return json.load(f)['train']['resumed_from']


def examples_seen(workdir) -> list:
  return metrics.read_jsonl(os.path.join(workdir, 'examples.jsonl'))


def checkpoint_steps(workdir) -> list:
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')).all_steps()


def final_state(workdir, step: int = STEPS) -> list:
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return [np.asarray(leaf) for leaf in restored['state']]


def wait_for_steps(process, workdir, steps: int, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while len(step_losses(workdir)) < steps:
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, 'the run made no progress'
    time.sleep(0.05)


def store_files(path: str) -> dict:
  """{relative path: bytes} of every file of a store."""
  files = {}
  for folder, _, names in os.walk(path):
    for name in names:
      with open(os.path.join(folder, name), 'rb') as f:
        files[os.path.relpath(os.path.join(folder, name), path)] = f.read()
  return files


def error_line(result) -> str:
  """The one ``error:`` line a refused or stopped run ends with; fails on a success, a
  traceback or a second ``error:`` line."""
  assert result.returncode not in (0, None), 'the run did not fail'
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == lines[0], result.stderr[-3000:]
  return lines[0]


def main_in_process(capfd, *argv) -> subprocess.CompletedProcess:
  """``main.run`` in this process, as a fresh one would run it (every flag unparsed first,
  absl's log into this test's stderr), with pytest's ``capfd``: for refusals and runs
  whose stages are all done, which train nothing. Returns what a subprocess would."""
  flags.FLAGS.unparse_flags()
  for name in [name for name in flags.FLAGS if name.startswith('config.')]:
    delattr(flags.FLAGS, name)  # the last run's overrides, which parsing defines anew
  saved, sys.argv = sys.argv, ['tinyvit_jax.main', *argv]  # config_flags reads sys.argv
  logging.get_absl_handler().python_handler.stream = sys.stderr  # this test's, not the first's
  try:
    main.run(sys.argv)
    code = 0
  except SystemExit as stop:  # app.run ends every run with sys.exit
    code = stop.code or 0
  finally:
    sys.argv = saved
  captured = capfd.readouterr()
  return subprocess.CompletedProcess(argv, code, captured.out, captured.err)
