import os
import sys

import pytest

# Tests import their helpers (e.g. timm_reference) by module name.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true',
                   help='also run tests marked slow (CI does)')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--run-slow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)
