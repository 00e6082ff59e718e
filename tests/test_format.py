"""The code is formatted by the one formatter pyproject.toml configures
(ruff format: 80 columns, 2-space indents), so a diff shows only changes."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_code_is_formatted():
  out = subprocess.run(
    [sys.executable, '-m', 'ruff', 'format', '--check', '--diff', '.'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 0, (
    'Files are not formatted; run `ruff format .` from the repository '
    'root:\n' + out.stdout[-4000:] + out.stderr[-2000:]
  )
