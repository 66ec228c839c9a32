"""Every Python file is as yapf formats it (setup.cfg's [yapf]: Google style, 2-space
indents, 100 columns), so a diff shows only what changed."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ('tinyvit_jax', 'tests', 'benchmarks', 'configs')


def test_every_file_is_formatted():
  result = subprocess.run(
      [sys.executable, '-m', 'yapf', '--diff', '--recursive', '--parallel', *FOLDERS], cwd=REPO,
      capture_output=True, text=True, timeout=600)
  changed = sorted({
      line[4:].split('\t')[0].removesuffix('(original)').strip()
      for line in result.stdout.splitlines()
      if line.startswith('--- ')
  })
  assert not changed, (f'{len(changed)} file(s) not formatted: {changed[:10]}; run '
                       f'`python -m yapf -i -r -p {" ".join(FOLDERS)}`')
  assert result.returncode == 0, result.stderr[-2000:]
