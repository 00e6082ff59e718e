"""Running the real command, `python -m lcreg_jax.main`, from a test."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, **env) -> subprocess.CompletedProcess:
  """The command in a fresh process, from the repository root.

  The process inherits the test session's environment: the same fake
  devices and the same compilation cache, so it reuses compiled programs.
  """
  return subprocess.run(
      [sys.executable, '-m', 'lcreg_jax.main', *args], cwd=ROOT,
      env=dict(os.environ, **env), capture_output=True, text=True,
      timeout=600)
