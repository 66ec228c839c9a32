"""Monitoring: metrics as JSONL and TensorBoard events, the curves PNG and the summary
table (the progress bars are ``progress.py``'s).

``WORKDIR/metrics.jsonl`` is the record a run resumes and plots from: one JSON object a
line, ``{"step": ..., name: value, ...}``, flushed as written. A resumed run first drops
the lines after its checkpoint's step, so the file never holds steps that were redone.
TensorBoard events go to ``WORKDIR/tensorboard/`` (``tensorboard_events``); on resume the
new event file carries a purge step, so TensorBoard hides the old file's events from the
redone steps too. Only process 0 writes, and in the caller's thread: a full disk raises
``DiskFull`` at the write, and nothing is left to wait on at exit.
"""
import json
import math
import os

from tinyvit_jax import writes
from tinyvit_jax.train import tensorboard_events

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file; a missing file has none. A torn last line (the process
  died mid-write) is skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def truncate_jsonl(path: str, step: int) -> None:
  """Keeps the rows with ``step <= step`` (atomically: a kill leaves the old file or
  the new one)."""
  if not os.path.exists(path):
    return
  kept = [row for row in read_jsonl(path) if row['step'] <= step]
  with writes.replacing(path) as tmp, open(tmp, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in kept)


def read_metrics(workdir: str) -> list[dict]:
  return read_jsonl(os.path.join(workdir, METRICS_FILE))


class MetricsWriter:
  """``write(step, **scalars)`` to ``metrics.jsonl`` and TensorBoard; a no-op off
  process 0."""

  def __init__(self, workdir: str, *, is_main: bool = True):
    self.workdir, self.is_main = workdir, is_main
    self.path = os.path.join(workdir, METRICS_FILE)
    self._purge_step = None
    self._tb = None
    if is_main:
      os.makedirs(workdir, exist_ok=True)

  def truncate_after(self, step: int) -> None:
    """Resuming from ``step``: forget everything logged after it."""
    if not self.is_main:
      return
    truncate_jsonl(self.path, step)
    self.close()
    self._purge_step = step + 1

  def write(self, step: int, **scalars) -> None:
    if not self.is_main:
      return
    row = writes.plain_json(dict(step=int(step), **scalars))  # Python numbers, for TensorBoard too
    with writes.writing(self.path), open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')  # a torn line reads as absent (read_jsonl)
    with writes.writing(os.path.join(self.workdir, TENSORBOARD_DIR)):
      if self._tb is None:
        self._tb = tensorboard_events.EventFile(os.path.join(self.workdir, TENSORBOARD_DIR),
                                                self._purge_step)
      self._tb.write_scalars(
          row['step'], {
              name: value
              for name, value in row.items()
              if name != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool)
          })

  def close(self) -> None:
    if self._tb is not None:
      tb, self._tb = self._tb, None
      with writes.writing(os.path.join(self.workdir, TENSORBOARD_DIR)):
        tb.close()


CURVES = {
    'train loss': 'loss',
    'eval loss': 'eval_loss',
    'teacher KL': 'eval_teacher_kl',
    'top-1': 'eval_top1',
    'top-5': 'eval_top5',
    'teacher agreement': 'eval_teacher_agreement'
}  # what ``plot_curves`` draws


def curves(rows: list) -> dict:
  """label -> (steps, values) of each of ``CURVES`` in ``rows``; non-finite values, as
  the loss of a diverged step, are left out."""
  found = {}
  for label, key in CURVES.items():
    points = [r for r in rows if _finite(r.get(key))]
    found[label] = ([r['step'] for r in points], [r[key] for r in points])
  return found


def plot_curves(workdir: str, out_png: str) -> str:
  """Train and eval loss, and eval top-1/top-5, against the step, from ``metrics.jsonl``;
  with a teacher, KL(teacher || student) beside the losses and agreement beside top-1."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  series = curves(read_metrics(workdir))
  fig = Figure(figsize=(10, 4), dpi=100)
  FigureCanvasAgg(fig)
  loss_ax, acc_ax = fig.subplots(1, 2)
  for label, ax, style in (('train loss', loss_ax, '-'), ('eval loss', loss_ax, 'o-'),
                           ('teacher KL', loss_ax, 'o-'), ('top-1', acc_ax, 'o-'),
                           ('top-5', acc_ax, 'o-'), ('teacher agreement', acc_ax, 'o-')):
    if series[label][0]:
      ax.plot(*series[label], style, label=label)
  loss_ax.set(xlabel='step', ylabel='loss', title='loss')
  acc_ax.set(xlabel='step', ylabel='accuracy', title='eval accuracy')
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.suptitle(os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  fig.savefig(out_png)
  return out_png


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    if not math.isfinite(value) or abs(value) < 1:
      return f'{value:.4f}'
    return f'{value:.1f}' if abs(value) < 1000 else f'{value:,.0f}'
  return str(value)


def summary_table(rows: list[dict], columns: list[str] | None = None) -> str:
  """A fixed-width text table: one row per dict, columns in order of first appearance
  (or ``columns``). Numbers align right, text left; missing values show as ``-``."""
  if columns is None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
  cells = [[_cell(row.get(c)) for c in columns] for row in rows]
  widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
  numeric = [
      all(isinstance(row.get(c), (int, float)) or row.get(c) is None
          for row in rows)
      for c in columns
  ]

  def line(values):
    return '  '.join(
        v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

  rule = '  '.join('-' * w for w in widths)
  return '\n'.join([line(columns), rule] + [line(values) for values in cells])
