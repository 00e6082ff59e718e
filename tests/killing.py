"""Stopping a run the way a SIGKILL would, for resume tests.

A loop hook (`loop.fit`'s `hooks=`, called as hook(name, step, state) after
each step) that raises `Kill` ends the run there with no clean exit: what is
on disk is what the last checkpoint saved.
"""


class Kill(Exception):
  """Raised by a hook to stop a run mid-way; tests expect it with
  pytest.raises(Kill)."""


def kill_at(name, step):
  """A hook that raises Kill after `step` of the loop called `name`
  ('stage1', 'stage2', 'flow_0', ...); name=None matches any loop. With
  step=None it never fires, so `hooks=[kill_at(*where)]` can be passed
  unconditionally."""

  def hook(loop_name, loop_step, state):
    del state
    if step is not None and loop_step == step and name in (None, loop_name):
      raise Kill()

  return hook
