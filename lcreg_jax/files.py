"""The run's files on any file system etils.epath knows: local paths,
`gs://` (Cloud Storage, through tf.io.gfile), `s3://`, ...

Every file a run writes or reads in its workdir (config.json, reports,
plots, summaries, checkpoint fingerprints) goes through these helpers or
through orbax and TensorBoard, which take the same paths; nothing uses
`os.path` or `open` on a workdir path, so `--workdir=gs://bucket/run` works
for all of it.
"""

import json
import os

from etils import epath


def is_uri(path) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...), False for local."""
  return '://' in os.fspath(path)


def as_path(path) -> epath.Path:
  """An epath.Path; a local path made absolute (orbax needs absolute paths,
  and logs then say where files went), a URI kept as it is."""
  p = epath.Path(path)
  return p if is_uri(p) else p.absolute()


def write_text(path, text: str) -> None:
  """Writes a file atomically where the file system can: a temporary file
  renamed over the target, so a crash never leaves half a file. (On object
  stores the rename is a copy, still never a partial target.)"""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path, obj, **dump_kwargs) -> None:
  write_text(path, json.dumps(obj, **dump_kwargs))


def read_json(path):
  return json.loads(as_path(path).read_text())
