"""Data a source cannot read where it was pointed: the one line names the path, what was
expected there and the command that makes it."""
from tinyvit_jax import errors


class NoData(errors.UserError, FileNotFoundError):
  """The path does not hold the data its source reads."""


class UnusableData(errors.UserError, ValueError):
  """The path holds data its source cannot use: empty, of another format or conversion."""
