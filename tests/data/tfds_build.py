"""Writes small prepared TFDS builds for the tests (nothing is downloaded)."""

import numpy as np

_BUILDERS = {}


def _builder_class(name):
  """A GeneratorBasedBuilder registered as `name`, whose examples come from
  its class attribute SPLITS (set before each build)."""
  if name in _BUILDERS:
    return _BUILDERS[name]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')
    SPLITS, NUM_CLASSES, CHANNELS, ENCODING, SHUFFLE = {}, 2, 3, 'png', False

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=not self.SHUFFLE,
        features=tfds.features.FeaturesDict(
          {
            'image': tfds.features.Image(
              shape=(None, None, self.CHANNELS), encoding_format=self.ENCODING
            ),
            'label': tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            'file_name': tfds.features.Text(),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in self.SPLITS}

    def _generate_examples(self, split):
      for i, (image, label, fname) in enumerate(zip(*self.SPLITS[split])):
        yield (
          f'{i:08d}',
          {
            'image': np.asarray(image),
            'label': int(label),
            'file_name': str(fname),
          },
        )

  Builder.name = name
  _BUILDERS[name] = Builder
  return Builder


def write_build(
  data_dir,
  name,
  splits,
  *,
  num_classes,
  file_format='array_record',
  encoding='png',
  shuffle=False,
):
  """Prepares TFDS `name` in data_dir from {split: (images, labels, file_names)}
  (images uint8 (H, W, C) each, any sizes). Without `shuffle` the records
  keep the given order. Returns the build's folder."""
  cls = _builder_class(name)
  cls.SPLITS, cls.NUM_CLASSES, cls.ENCODING, cls.SHUFFLE = (
    splits,
    num_classes,
    encoding,
    shuffle,
  )
  cls.CHANNELS = int(np.asarray(next(iter(splits.values()))[0][0]).shape[-1])
  builder = cls(data_dir=str(data_dir), file_format=file_format)
  builder.download_and_prepare()
  return str(builder.data_dir)
