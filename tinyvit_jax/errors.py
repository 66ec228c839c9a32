"""The one kind of error a user meets: each CLI prints it as one ``error:`` line.

Every refusal, and every "stopped, here is why and how to go on", derives from
``UserError``; its message names the file or field and the fix. Anything else that
escapes is a bug in this project, and keeps its traceback.
"""
import sys


class UserError(Exception):
  """An error whose message says it all: what, where, and how to go on."""


def refuse(error: UserError | str, status: int = 1) -> int:
  """Prints ``error`` as the one ``error: <message>`` line on stderr, as every CLI does, and
  returns the CLI's exit status."""
  print(f'error: {error}', file=sys.stderr, flush=True)
  return status
