"""iNaturalist 2018, MiSLAS's recipe + LCReg with M = 200 (docs/method.md §1, §2,
§4, §5). ResNet-50. The official validation set (24,426 images) is the test
set, as in the papers.

Images stream from disk: data.image_root is the folder the lists' paths
start from (train_val2018/...), the lists are iNaturalist18_train.txt and
iNaturalist18_val.txt (as distributed with Decoupling/MiSLAS).

Or from a prepared TFDS build (ArrayRecord), streamed by index; its labelled
validation split is the test set:
  --config.data.source=tfds_stream --config.data.tfds_name=i_naturalist2018
  --config.data.tfds_data_dir=/data/tfds --config.data.tfds_test_split=validation
  --config.data.image_root= --config.data.train_list= --config.data.test_list=

Command:
  python -m lcreg_jax.main --config=configs/inat2018.py --workdir=workdirs/inat2018 \
      --config.data.image_root=/data/inat2018 \
      --config.data.train_list=/data/iNat2018/iNaturalist18_train.txt \
      --config.data.test_list=/data/iNat2018/iNaturalist18_val.txt
Result to expect: no run record yet (docs/results.md lists the recorded
runs; docs/method.md §7 gives the published figures).
"""

from lcreg_jax import config


def get_config():
  c = config.base_config()
  d = c.data
  d.name = 'inat2018'
  d.source = 'list'
  d.image_root = 'data/iNat2018'
  d.train_list = 'data/iNat2018/iNaturalist18_train.txt'
  d.test_list = 'data/iNat2018/iNaturalist18_val.txt'
  d.num_classes, d.image_size, d.channels = 8142, 224, 3
  d.imbalance_factor = 1.0
  d.augment = 'imagenet'
  c.model.backbone = 'resnet50'
  c.model.latent.num_latents = 200
  # Full covariance at M = 200, D = 2048 is 3.4 GB (docs/data.md, "Memory"): diagonal.
  c.model.latent.covariance = 'diagonal'
  c.stage1.update(
    epochs=200.0,
    batch_size=256,
    lr=0.1,
    weight_decay=1e-4,
    schedule='cosine',
    warmup_epochs=0.0,
    mixup_alpha=0.2,
  )
  # Stage 2's weight decay and batch size come from the preset row (docs/method.md §4).
  c.stage2.update(preset='inat2018', epochs=10.0)
  c.eval.batch_size = 256
  c.log_every = 100
  c.checkpoint_every = 1000
  return c
