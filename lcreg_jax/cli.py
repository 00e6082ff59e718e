"""absl's app.run for the package's commands, with `--help` exiting 0.

absl prints the usage for --help (-h, --helpshort, --helpfull) and then
exits 1; asking for help is not a failure, so these commands exit 0 then.
"""

import sys

from absl import app

HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull')


def run(main, **kwargs):
  """app.run(main, **kwargs), but a help request exits 0."""
  try:
    app.run(main, **kwargs)
  except SystemExit as e:
    if e.code == 1 and any(a in HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
