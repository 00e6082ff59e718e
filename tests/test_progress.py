"""The progress line: speed and ETA from a fake clock, throttling, the
in-place redraw, and the loop drawing it (forced on) for a resumed run."""

import io

import pytest

from lcreg_jax import progress


class Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


@pytest.mark.parametrize(
  'seconds,text', [(0, '0:00'), (7.4, '0:07'), (65, '1:05'), (3723, '1:02:03')]
)
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_speed_and_eta_from_the_first_step_on():
  clock, out = Clock(), io.StringIO()
  line = progress.ProgressLine(
    'stage1',
    100,
    0,
    batch_size=64,
    stream=out,
    enabled=True,
    clock=clock,
    min_interval=0.0,
  )
  line.update(1)  # after compilation: the reference point
  assert out.getvalue() == '\rstage1: step 1/100 (1%)'
  clock.t += 10.0  # 20 steps in 10 s: 2 steps/s, 128 img/s
  line.update(21)
  last = out.getvalue().split('\r')[-1]
  # 79 steps left at 2 steps/s: 39.5 s, shown rounded.
  assert last == 'stage1: step 21/100 (21%) · 128 img/s · ETA 0:40'
  clock.t += 39.5
  line.update(100)
  last = out.getvalue().split('\r')[-1]
  assert last.startswith('stage1: step 100/100 (100%) · 128 img/s · took 0:50')
  line.close()
  assert out.getvalue().endswith('\n') and out.getvalue().count('\n') == 1


def test_redraws_are_throttled_but_the_last_step_is_always_drawn():
  clock, out = Clock(), io.StringIO()
  line = progress.ProgressLine(
    'flow', 10, 4, stream=out, enabled=True, clock=clock, min_interval=1.0
  )
  for step in range(5, 11):  # a resumed run: steps 5..10, 0.1 s apart
    line.update(step)
    clock.t += 0.1
  draws = out.getvalue().split('\r')[1:]
  assert [d.split(' ')[2] for d in draws] == ['5/10', '10/10']
  # No batch size: steps per second (5 steps in 0.5 s), padded over the
  # longer previous line so no stale characters remain.
  assert '10.0 steps/s' in draws[-1]
  assert len(draws[-1]) >= len(draws[0])


def test_disabled_writes_nothing(monkeypatch):
  out = io.StringIO()  # not a terminal, and no kernel in this process
  monkeypatch.delenv('LCREG_PROGRESS', raising=False)
  monkeypatch.delitem(__import__('sys').modules, 'ipykernel', raising=False)
  line = progress.ProgressLine('stage1', 5, stream=out)
  assert not line.enabled
  for step in range(1, 6):
    line.update(step)
  line.close()
  assert out.getvalue() == ''
  monkeypatch.setenv('LCREG_PROGRESS', '1')
  assert progress.wanted(out)
  monkeypatch.setenv('LCREG_PROGRESS', '0')
  assert not progress.wanted(type('Tty', (), {'isatty': lambda s: True})())
