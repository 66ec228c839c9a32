"""A formulation chosen for every model at once, as timm's ``use_fused_attn``: from an
environment variable at import, or set in code. Models read it when they are traced, so
set it before ``jax.jit`` first compiles one."""
import contextlib
import os


class Switch:
  """One named choice among ``choices`` (the first is the default)."""

  def __init__(self, name: str, env: str, choices: tuple):
    self.name, self.env, self.choices = name, env, choices
    self._value = self.check(os.environ.get(env) or choices[0])

  def check(self, value: str) -> str:
    """``value`` if it is one of the choices, else a ValueError naming them."""
    if value not in self.choices:
      raise ValueError(f'{self.name}={value!r}; expected one of {self.choices} (set in code '
                       f'or by ${self.env}).')
    return value

  def get(self) -> str:
    return self._value

  def set(self, value: str) -> str:
    """Sets the choice for what is traced from now on; returns the previous one."""
    previous, self._value = self._value, self.check(value)
    return previous

  @contextlib.contextmanager
  def using(self, value: str):
    previous = self.set(value)
    try:
      yield
    finally:
      self.set(previous)
