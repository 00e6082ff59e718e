"""A configuration small enough for unit tests: ResNet-8 on digits-LT."""

from lcreg_jax import config


def tiny_config():
  c = config.base_config()
  c.data.source = 'digits'
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 1, 10
  c.data.pad = 1
  c.data.augment = 'crop'
  c.model.backbone = 'resnet8'
  c.model.latent.num_latents = 4
  c.stage1.update(
    steps=6,
    batch_size=16,
    warmup_epochs=0.1,
    warmup='per_iteration',
    decay_epochs=(0.5,),
    lr=0.05,
  )
  # shift_bn: the BatchNorm statistics change in stage 2 too, so resume
  # must restore them.
  c.stage2.update(steps=4, batch_size=16, shift_bn=True)
  c.log_every = 1
  c.checkpoint_every = 2
  c.eval.update(batch_size=64, plots=False)
  return c


# So that the file also works as `--config=tests/tiny.py`.
get_config = tiny_config
