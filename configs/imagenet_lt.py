"""ImageNet-LT (Liu et al. 2019 lists), MiSLAS's ImageNet recipe + LCReg with
M = 100 (docs/method.md §1, §2, §4, §5). ResNet-50; ResNet-10 with
--config.model.backbone=resnet10.

Images stream from disk: point data.image_root at the ImageNet (ILSVRC-12)
folder the lists' paths start from (train/..., val/...) and the lists at
OLTR's ImageNet_LT_{train,val,test}.txt, e.g.
  --config.data.image_root=/data/imagenet
  --config.data.train_list=/data/ImageNet_LT/ImageNet_LT_train.txt

Or from a prepared TFDS build (ArrayRecord; `tfds build imagenet_lt
--manual_dir=RAW --file_format=array_record`), streamed by index:
  --config.data.source=tfds_stream --config.data.tfds_name=imagenet_lt
  --config.data.tfds_data_dir=/data/tfds --config.data.image_root=
  --config.data.train_list= --config.data.test_list=
  [--config.data.tfds_val_split=validation]
(the build's splits: train, validation = the 20-per-class ImageNet-LT val,
test = the 50,000 ILSVRC-12 validation images).

Command:
  python -m lcreg_jax.main --config=configs/imagenet_lt.py --workdir=workdirs/imagenet_lt \
      --config.data.image_root=/data/imagenet \
      --config.data.train_list=/data/ImageNet_LT/ImageNet_LT_train.txt \
      --config.data.val_list=/data/ImageNet_LT/ImageNet_LT_val.txt \
      --config.data.test_list=/data/ImageNet_LT/ImageNet_LT_test.txt
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  d = c.data
  d.name = 'imagenet_lt'
  d.source = 'list'
  d.image_root = 'data/imagenet'
  d.train_list = 'data/ImageNet_LT/ImageNet_LT_train.txt'
  # The 20-per-class validation list is optional (DLSA selects on it; without
  # it DLSA carves its validation images from the training set):
  # --config.data.val_list=data/ImageNet_LT/ImageNet_LT_val.txt
  d.val_list = None
  d.test_list = 'data/ImageNet_LT/ImageNet_LT_test.txt'
  d.num_classes, d.image_size, d.channels = 1000, 224, 3
  d.imbalance_factor = 1.0  # the lists are the long tail
  d.augment = 'imagenet'
  c.model.backbone = 'resnet50'
  c.model.latent.num_latents = 100
  # A full M × D × D covariance at D = 2048 is 1.7 GB, and its update needs
  # two more of that: diagonal keeps the train state of a 16 GB accelerator
  # for the network (docs/data.md, "Memory").
  c.model.latent.covariance = 'diagonal'
  c.stage1.update(
    epochs=180.0,
    batch_size=256,
    lr=0.1,
    weight_decay=5e-4,
    schedule='cosine',
    warmup_epochs=0.0,
    mixup_alpha=0.2,
  )
  # Stage 2's weight decay and batch size come from the preset row (docs/method.md §4).
  c.stage2.update(preset='imagenet_lt', epochs=10.0)
  c.eval.batch_size = 256
  c.log_every = 100
  c.checkpoint_every = 1000
  return c
