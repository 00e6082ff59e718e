"""List files: parsed with their counts; every bad line or missing file is
named with its line before any training."""

import os

import numpy as np
import pytest

from lcreg_jax import errors
from lcreg_jax.data import listfile


def _write(tmp_path, text, files=()):
  for f in files:
    (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / f).write_bytes(b'x')
  path = tmp_path / 'train.txt'
  path.write_text(text)
  return str(path)


def test_parses_paths_and_labels(tmp_path):
  path = _write(
    tmp_path,
    'a/1.jpg 0\n\nb/2 x.jpg 2\n  c/3.jpg 2  \n',
    ['a/1.jpg', 'b/2 x.jpg', 'c/3.jpg'],
  )
  split = listfile.read_list(path, str(tmp_path), 3)
  assert list(split.paths) == [
    os.path.join(tmp_path, p) for p in ('a/1.jpg', 'b/2 x.jpg', 'c/3.jpg')
  ]
  np.testing.assert_array_equal(split.labels, [0, 2, 2])
  assert split.labels.dtype == np.int32 and split.list_path == path


@pytest.mark.parametrize(
  'text,expected',
  [
    ('a.jpg 0\nb.jpg\n', 'line 2 "b.jpg" has no label'),
    ('a.jpg 0\nb.jpg two\n', 'line 2 "b.jpg two" has no integer label'),
    ('a.jpg 0\n\nb.jpg 7\n', 'line 3 has label 7, outside [0, 3)'),
    ('a.jpg -1\n', 'line 1 has label -1'),
    ('\n\n', 'lists no images'),
  ],
)
def test_bad_lines_are_named(tmp_path, text, expected):
  path = _write(tmp_path, text)
  with pytest.raises(errors.DataError) as e:
    listfile.read_list(path, str(tmp_path), 3, check_files=False)
  assert expected in str(e.value) and path in str(e.value)


def test_many_bad_lines_are_counted(tmp_path):
  path = _write(tmp_path, ''.join(f'{i}.jpg 9\n' for i in range(8)))
  with pytest.raises(errors.DataError) as e:
    listfile.read_list(path, str(tmp_path), 3, check_files=False)
  assert '8 bad lines' in str(e.value) and 'and 3 more' in str(e.value)


def test_missing_images_are_named_with_their_lines(tmp_path):
  path = _write(tmp_path, 'a.jpg 0\n\nb.jpg 1\n', ['a.jpg'])
  with pytest.raises(errors.DataError) as e:
    listfile.read_list(path, str(tmp_path), 3)
  assert f'{tmp_path}/b.jpg (line 3)' in str(e.value)
  assert 'check_files=False' in str(e.value)
  assert (
    len(listfile.read_list(path, str(tmp_path), 3, check_files=False).labels)
    == 2
  )


def test_missing_list_file(tmp_path):
  with pytest.raises(errors.DataError, match='nowhere.txt does not exist'):
    listfile.read_list(str(tmp_path / 'nowhere.txt'), str(tmp_path), 3)
