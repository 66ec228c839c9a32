"""Progress bars: counted in images, and redrawn rarely enough for a log file."""
import io

from tinyvit_jax import progress


def test_progress_counts_images(capsys):
  bar = progress.train_bar(10, 4, 32, is_main=True)
  assert bar.n == 4 and bar.total == 10 and not bar.disable
  assert '128/320' in str(bar)
  bar.update(1)
  bar.close()
  assert progress.train_bar(10, 0, 32, is_main=False).disable


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def redraws(stream, updates: int = 20_000, seconds_each: float = 0.1) -> int:
  """How often a bar on ``stream`` draws itself over ``updates`` updates spread (on a
  simulated clock) over ``updates * seconds_each`` seconds."""
  with progress.bar(file=stream, total=updates) as shown:
    now = shown.start_t
    shown._time = lambda: now  # tqdm reads its clock through this attribute
    for _ in range(updates):
      now += seconds_each
      shown.update(1)
  return stream.getvalue().count('\r')


def test_bar_in_a_log_draws_every_30_seconds_and_on_a_terminal_every_second():
  log, terminal = io.StringIO(), _Terminal()
  assert redraws(log) <= 2_000 / progress.LOG_INTERVAL + 3  # 2,000 simulated seconds
  assert len(log.getvalue()) < 100 * 70  # bytes: ~70 a line
  assert 2_000 * 0.9 <= redraws(terminal) <= 2_000 + 3
