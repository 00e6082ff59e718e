"""Places-LT (Liu et al. 2019 lists), MiSLAS's recipe + LCReg with M = 100
(docs/method.md §1, §2, §4, §5).

As MiSLAS: torchvision's ImageNet ResNet-152 is the trunk, frozen (no
gradient, BatchNorm in inference mode) except its last bottleneck block,
which starts fresh and trains with the latent module and the classifier.
Give the ImageNet weights as a torchvision-layout state dict:
  --config.model.pretrained_weights=/data/weights/resnet152.npz
(without them the frozen trunk is random, with a warning). Images stream
from disk: data.image_root is the Places365 folder the lists' paths start
from, the lists OLTR's Places_LT_{train,val,test}.txt.

Or from a prepared places365_small TFDS build (ArrayRecord) whose records
the Places-LT lists pick by file name (train and val from its train split,
test from its validation split):
  --config.data.source=tfds_stream --config.data.tfds_name=places365_small
  --config.data.tfds_data_dir=/data/tfds --config.data.image_root=
  --config.data.tfds_test_split=validation
  [--config.data.val_list=.../Places_LT_val.txt --config.data.tfds_val_split=train]

Command:
  python -m lcreg_jax.main --config=configs/places_lt.py --workdir=workdirs/places_lt \
      --config.model.pretrained_weights=/data/weights/resnet152.npz \
      --config.data.image_root=/data/places365 \
      --config.data.train_list=/data/Places_LT/Places_LT_train.txt \
      --config.data.test_list=/data/Places_LT/Places_LT_test.txt
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  d = c.data
  d.name = 'places_lt'
  d.source = 'list'
  d.image_root = 'data/places365'
  d.train_list = 'data/Places_LT/Places_LT_train.txt'
  # Optional, as for ImageNet-LT:
  # --config.data.val_list=data/Places_LT/Places_LT_val.txt
  d.val_list = None
  d.test_list = 'data/Places_LT/Places_LT_test.txt'
  d.num_classes, d.image_size, d.channels = 365, 224, 3
  d.imbalance_factor = 1.0
  d.augment = 'imagenet'
  m = c.model
  m.backbone = 'resnet152'
  m.trainable_blocks = 1
  m.pretrained_dont_load = (
    'params/backbone/stage4_block3/.*',
    'batch_stats/backbone/stage4_block3/.*',
  )
  m.latent.num_latents = 100
  # Full covariance at D = 2048 does not fit beside ResNet-152 on 16 GB
  # (docs/data.md, "Memory"): diagonal.
  m.latent.covariance = 'diagonal'
  c.stage1.update(
    epochs=90.0,
    batch_size=256,
    lr=0.1,
    weight_decay=5e-4,
    schedule='cosine',
    warmup_epochs=0.0,
    mixup_alpha=0.2,
  )
  # Stage 2's weight decay and batch size come from the preset row (docs/method.md §4).
  c.stage2.update(preset='places_lt', epochs=10.0)
  c.eval.batch_size = 256
  c.log_every = 100
  c.checkpoint_every = 1000
  return c
