"""The one kind of error a user meets: each CLI prints it as one ``error:`` line.

Every refusal, and every "stopped, here is why and how to go on", derives from
``UserError``; its message names the file or field and the fix. Anything else that
escapes is a bug in this project, and keeps its traceback.
"""


class UserError(Exception):
  """An error whose message says it all: what, where, and how to go on."""
