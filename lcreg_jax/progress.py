"""A progress line for notebooks and terminals: step, speed and ETA,
refreshed in place ('\\r'), beside the absl log lines (which a notebook
does not show, and a terminal shows only every log_every steps).

Shown on process 0 when stdout is a terminal or a Jupyter/Colab kernel;
LCREG_PROGRESS=1 forces it on (e.g. into a log file), LCREG_PROGRESS=0 off.
"""

import os
import sys
import time
from typing import Callable, TextIO

import jax


def wanted(stream: TextIO) -> bool:
  """Whether to show the line on `stream` (see the module docstring)."""
  forced = os.environ.get('LCREG_PROGRESS', '')
  if forced in ('0', '1'):
    return forced == '1' and jax.process_index() == 0
  if jax.process_index() != 0:
    return False
  interactive = getattr(stream, 'isatty', lambda: False)()
  return interactive or 'ipykernel' in sys.modules


def format_duration(seconds: float) -> str:
  """1:02:03, 4:05 or 0:07."""
  s = int(round(max(seconds, 0.0)))
  h, rest = divmod(s, 3600)
  m, s = divmod(rest, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class ProgressLine:
  """`update(step)` after each step; `close()` at the end (or on error).

  Speed is measured from the first step this run made, so compilation and a
  resume's skipped steps do not distort it; before a second step there is no
  ETA. Redraws at most every `min_interval` seconds, and at the last step.
  """

  def __init__(
    self,
    name: str,
    total_steps: int,
    start_step: int = 0,
    *,
    batch_size: int | None = None,
    unit: str = 'img',
    stream: TextIO | None = None,
    enabled: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
    min_interval: float = 0.5,
  ):
    self.name, self.total = name, total_steps
    self.batch_size, self.unit = batch_size, unit
    self.stream = stream if stream is not None else sys.stdout
    self.enabled = wanted(self.stream) if enabled is None else enabled
    self._clock, self._min_interval = clock, min_interval
    self._first = None  # (step, time) of the first step seen
    self._last_draw = -float('inf')
    self._width = 0
    self._drawn = False

  def text(self, step: int, now: float) -> str:
    """The line for `step` done at time `now`."""
    parts = [
      f'{self.name}: step {step}/{self.total} '
      f'({100 * step / max(self.total, 1):.0f}%)'
    ]
    first_step, first_time = self._first
    if step > first_step and now > first_time:
      rate = (step - first_step) / (now - first_time)  # steps per second
      if self.batch_size:
        parts.append(f'{rate * self.batch_size:,.0f} {self.unit}/s')
      else:
        parts.append(f'{rate:.1f} steps/s')
      if step < self.total:
        parts.append(f'ETA {format_duration((self.total - step) / rate)}')
      else:
        parts.append(f'took {format_duration(now - first_time)}')
    return ' · '.join(parts)

  def update(self, step: int):
    if not self.enabled:
      return
    now = self._clock()
    if self._first is None:
      self._first = (step, now)
    if step < self.total and now - self._last_draw < self._min_interval:
      return
    self._last_draw = now
    line = self.text(step, now)
    pad = max(self._width - len(line), 0)
    self._width = len(line)
    self.stream.write('\r' + line + ' ' * pad)
    self.stream.flush()
    self._drawn = True

  def close(self):
    """Ends the line, so that the next output starts on a fresh one."""
    if self.enabled and self._drawn:
      self.stream.write('\n')
      self.stream.flush()
      self._drawn = False
