"""Errors that stop a run with a message a user can act on.

`main` prints these as one paragraph (`error: ...`) instead of a traceback and
exits non-zero; any other exception is a bug and keeps its traceback. Every
message says what is wrong and what to do about it.
"""


class UserError(Exception):
  """Base class of the errors that explain themselves."""


class ConfigError(UserError):
  """A config value that is unknown, out of range or inconsistent."""


class DataError(UserError, ValueError):
  """Bad or missing input data; the message names the path and the fix."""


class CheckpointError(UserError):
  """A checkpoint directory that belongs to another model, or is damaged."""


class NonFiniteLossError(UserError):
  """The loss or the parameters became NaN or infinite."""


class WeightsError(UserError):
  """Pretrained weights that are missing, unreadable or do not fit the model."""


class Preempted(UserError):
  """SIGTERM arrived; a checkpoint was saved at the step the message names."""
