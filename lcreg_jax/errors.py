"""Errors that stop a run with a message a user can act on.

`main` prints these as one paragraph instead of a traceback; anything else is
a bug and keeps its traceback.
"""


class LCRegError(Exception):
  """Base class of the errors that explain themselves."""


class NonFiniteLossError(LCRegError):
  pass


class CheckpointMismatchError(LCRegError):
  pass


class ConfigError(LCRegError):
  pass
