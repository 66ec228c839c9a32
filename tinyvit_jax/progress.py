"""Progress bars: tqdm, quiet enough for a log file, counted in images.

The lowest layer beside ``errors`` and ``writes``: the save pass, the teacher's eval
and the train loop all draw one.
"""
import sys

import jax
import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal


def train_bar(total_steps: int, start_step: int, images_per_step: int, *,
              is_main: bool | None = None) -> tqdm.tqdm:
  """A tqdm bar counted in images (so its rate is images/s) with the ETA; call
  ``update(1)`` per step. Silent off process 0."""
  if is_main is None:
    is_main = jax.process_index() == 0
  return bar(total=total_steps, initial=start_step, unit='img', unit_scale=images_per_step,
             desc='train', disable=not is_main, dynamic_ncols=True)


def bar(file=None, **kwargs) -> tqdm.tqdm:
  """A tqdm bar (to stderr by default) redrawn every second on a terminal and every
  ``LOG_INTERVAL`` seconds in a file (a SLURM log, ``nohup``), where each redraw is a line
  kept for good: several a second add up to tens of MB over a multi-day run."""
  file = sys.stderr if file is None else file
  interval = 1.0 if file.isatty() else LOG_INTERVAL
  # tqdm's monitor thread redraws a bar idle for maxinterval (10 s) regardless.
  return tqdm.tqdm(file=file, mininterval=interval, maxinterval=max(interval, 10.0), **kwargs)
