import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tinyvit_jax import compile_cache

# Tests import their helpers (tests/helpers: timm_reference, the recipes and the scripts
# they run in other processes) and each other's fixtures by module name.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'helpers'))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_made_cache = []


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true', help='also run tests marked slow (CI does)')


def pytest_configure(config):
  """One compilation cache for every process of the suite, new for each suite: a program
  compiled by one test or subprocess is loaded by the next, and no run depends on what an
  earlier suite or the user's own runs left in ~/.cache. (xdist workers inherit it.)"""
  if compile_cache.ENV not in os.environ:
    os.environ[compile_cache.ENV] = tempfile.mkdtemp(prefix='tinyvit_jax_xla_')
    _made_cache.append(os.environ[compile_cache.ENV])
  compile_cache.enable()  # the test processes too: they build the same models


def pytest_unconfigure(config):
  for directory in _made_cache:
    shutil.rmtree(directory, ignore_errors=True)


# The longest groups of tests ("seconds per test file" at the end of a run), started first
# so that the other workers take the many short files meanwhile.
LONGEST_FIRST = ('quickstart', 'test_multiprocess.py', 'test_models_parity.py',
                 'test_train_system.py')


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """Skips the slow tests unless --run-slow. For ``-n`` (pytest-xdist, ``--dist loadgroup``
  in setup.cfg): each file's tests run in one worker, so that its module fixtures run
  once; so do the tests that share the quickstart, wherever they live."""

  def group(item):
    return 'quickstart' if 'quickstart' in item.fixturenames else item.path.name

  for item in items:
    item.add_marker(pytest.mark.xdist_group(group(item)))
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable
  if config.getoption('--run-slow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope='session')
def quickstart(tmp_path_factory):
  """The README's main job as a user runs it (``workdirs.QUICKSTART``: shorter runs), once
  per test session: the tests that inspect a finished quickstart (its table, its exports,
  its stage records, the notebook's rerun) share its workdir. Returns (workdir, the run's
  stdout)."""
  from workdirs import QUICKSTART  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('quickstart') / 'qs'
  result = subprocess.run(
      [sys.executable, '-m', 'tinyvit_jax.main', *QUICKSTART, f'--workdir={workdir}'], cwd=REPO,
      capture_output=True, text=True, timeout=1800, env=dict(os.environ, TQDM_DISABLE='1'))
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, result.stdout


class SmallDisk:
  """A 64 MiB tmpfs, to fill for real: ``fill(leave)`` leaves ``leave`` bytes free,
  ``free_up()`` gives the space back."""

  def __init__(self, path):
    self.path, self._ballast = path, os.path.join(path, 'ballast')

  def fill(self, leave: int = 0) -> None:
    fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT)
    try:
      for _ in range(20):  # a run writing meanwhile may take the space first: measure again
        size = os.fstat(fd).st_size + shutil.disk_usage(self.path).free - leave
        with contextlib.suppress(OSError):
          os.posix_fallocate(fd, 0, max(size, 1))
          return
      raise AssertionError(f'could not fill {self.path}')
    finally:
      os.close(fd)

  def free_up(self) -> None:
    os.remove(self._ballast)


@pytest.fixture
def small_disk(tmp_path):
  """A real full disk where this machine lets a test mount one (root in a container
  usually may); skipped, with mount's reason, where it does not."""
  path = tmp_path / 'disk'
  path.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs',
                            str(path)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a small tmpfs here: {mounted.stderr.strip()}')
  try:
    yield SmallDisk(str(path))
  finally:
    subprocess.run(['umount', '-l', str(path)], check=True)


def pytest_terminal_summary(terminalreporter):
  """Seconds per test file (setup, call and teardown), dearest first: what each file
  costs the suite's budget (README, "Tests")."""
  seconds = {}
  for reports in terminalreporter.stats.values():
    for report in reports:
      if isinstance(report, pytest.TestReport):
        path = report.nodeid.split('::')[0]
        seconds[path] = seconds.get(path, 0.0) + report.duration
  if not seconds:
    return
  terminalreporter.write_sep('=', 'seconds per test file')
  for path, spent in sorted(seconds.items(), key=lambda item: -item[1]):
    terminalreporter.write_line(f'{spent:8.1f}  {path}')
  total = sum(seconds.values())
  terminalreporter.write_line(f'{total:8.1f}  summed (with -n, more than the wall time)')
