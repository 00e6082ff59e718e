"""Every config key a run reads, with its type and default.

Files in configs/ start from `base_config()` and change values only, so a
misspelt override (`--config.stage1.lr_typo=1`) is rejected instead of being
silently ignored. A value that another one determines ("from the stage-2
preset", "1/√D") is a typed placeholder, `None` until
`config.resolve_and_validate` fills it in; the resolved config is what the run
uses and what it writes to `<workdir>/config.json`.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from lcreg_jax.config import dlsa


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_devices = placeholder(int)   # None: every visible device
  # Split the latent moments (M × D × D) along M over the devices
  # (docs/method.md §9). None: when the covariance is full, there is more than one device
  # and they divide M (JAX shards evenly only); otherwise replicated.
  c.shard_covariance = placeholder(bool)
  c.log_every = 50                   # steps between metric writes / NaN checks
  c.checkpoint_every = 500           # steps between checkpoints (and at the end)

  c.data = ml_collections.ConfigDict(dict(
      name='',                # for reports; '' = derived from the source
      # digits | idx | cifar10 | cifar100 | tfds (in memory) | list |
      # tfds_stream (a prepared TFDS build, ArrayRecord, streamed by index)
      source='digits',
      data_dir='',            # '' = the source's default location
      tfds_name='', tfds_data_dir='',
      # The build's splits for training / validation ('' = none) / test.
      tfds_train_split='train', tfds_val_split='', tfds_test_split='test',
      # source=list: image files streamed from disk, named by list files
      # ("relative/path label" per line, paths relative to image_root).
      # source=tfds_stream: lists, where given, pick the build's records by
      # file name (Places-LT from places365_small).
      image_root='', train_list='', val_list='', test_list='',
      check_files=True,       # list: check every file exists before training
      on_bad_image='stop',    # list: stop | skip (and count) unreadable images
      num_classes=10,
      image_size=8,           # model input side (224 for ImageNet-scale data)
      channels=1,
      eval_resize=256,        # augment=imagenet: shorter side before the crop
      # In-memory sources: the Cao et al. profile; 1 = as stored. List files
      # are the long tail themselves: for source=list the factor only names
      # the data set and picks the CIFAR presets' stage-2 row.
      imbalance_factor=10.0, lt_seed=0,
      digits_test_per_class=30,
      val_per_class=0,        # per-class validation images carved from train
      # crop_flip | crop | flip | none (CIFAR-style, any source) | imagenet
      # (random-resized crop, flip, colour jitter; source=list)
      augment='crop_flip',
      pad=4,
  ))

  c.model = ml_collections.ConfigDict(dict(
      backbone='resnet32', shortcut='A', dtype='float32',
      classify_on='sum',      # sum = GAP(F + F̂) | feature | reconstruction
      # A torchvision-layout ResNet state dict (.safetensors, .npz; .pth
      # with torch installed) for the backbone at the start of stage 1;
      # '' = random initialisation. Entries matching a regex in
      # pretrained_dont_load (e.g. 'params/backbone/stage4_block3/.*') keep
      # their initial values.
      pretrained_weights='', pretrained_dont_load=(),
      # None: the whole backbone learns. k: only its last k residual blocks
      # do; the stem and earlier blocks are frozen (no gradient, BatchNorm in
      # inference mode), as for Places-LT's ImageNet trunk.
      trainable_blocks=placeholder(int),
      # Class-wise ISDA baseline (docs/method.md §8): none | diagonal | full, the form
      # of the per-class feature covariances (C × D, or C × D × D: small C
      # only; 16 GB at C = 1000, D = 2048). On, stage 1 trains on ISDA's
      # bound over the C classes (λ = stage1.isda_lambda0 · t/T); it needs
      # latent.enabled=False, plain CE and no mixup. A model key because the
      # moments are part of the train state that stage 2 restores.
      class_isda='none',
      # linear (Dense with bias) | normed: s · cos(feature, w_c), the
      # bias-free cosine classifier LDAM-DRW trains with (its NormedLinear),
      # s = normed_scale (LDAM's 30; with stage1.loss=ldam it must equal
      # stage1.ldam_scale, the loss then adds its margins to the cosines).
      head='linear', normed_scale=30.0,
  ))
  c.model.latent = ml_collections.ConfigDict(dict(
      enabled=True, num_latents=40,
      # None: 1/√D (D = channels of the backbone map); the paper's literal
      # form is 1.
      similarity_scale=placeholder(float),
      tau_assign=1.0,
      covariance='full',      # full | diagonal
      recon_normalize=False, recon_temperature=1.0,
      explicit_latent_aug=False,
  ))

  c.stage1 = ml_collections.ConfigDict(dict(
      enabled=True,
      epochs=200.0,
      steps=placeholder(int),  # None: from epochs; set, it wins over epochs
      batch_size=128,
      lr=0.1, momentum=0.9, weight_decay=2e-4,
      schedule='step',        # step | cosine
      warmup_epochs=5.0, decay_epochs=(160.0, 180.0), decay_factor=0.1,
      # per_epoch (MiSLAS): lr·(e + 1)/warmup_epochs, set at the start of
      # epoch e (a whole number of warm-up epochs); per_iteration: linear in
      # the step, lr·(t + 1)/warmup_steps (any fraction of an epoch).
      warmup='per_epoch',
      mixup_alpha=1.0,        # 0: no mixup
      # global: partners from the whole global batch (as one process of
      # MiSLAS mixes its batch); per_device: from the same device's rows (as
      # DistributedDataParallel processes do, and big_vision), which avoids
      # gathering the batch across devices and hosts.
      mixup_partners='global',
      alpha=0.1, beta=0.1, gamma=1.0,   # eq. 7 weights of aug, recon, cls
      isda_lambda0=0.5,       # λ0 of the latent and the class-wise ISDA
      # The classification loss L_cls (docs/method.md §8 baselines): ce (MiSLAS) |
      # focal | ldam | balanced_softmax | logit_adjusted; under mixup each is
      # λ loss(y) + (1-λ) loss(y[perm]).
      loss='ce',
      focal_gamma=1.0,        # focal: γ (0 = CE)
      ldam_max_margin=0.5, ldam_scale=30.0,   # ldam: largest margin, s
      la_tau=1.0,             # logit_adjusted: τ of CE(z + τ log π, y)
      # Class weights of L_cls: none | effective_number (Cui et al., from the
      # first step) | drw (weights 1 until drw_epoch, then effective-number).
      reweight='none',
      reweight_beta=0.9999,   # β of the effective number (1-β^n)/(1-β)
      # drw: the weights switch on at step round(drw_epoch · steps/epoch).
      drw_epoch=160.0,
  ))

  c.stage2 = ml_collections.ConfigDict(dict(
      enabled=True,
      init_from='',           # '' = <workdir>/stage1/checkpoints
      epochs=10.0,
      steps=placeholder(int),
      batch_size=placeholder(int),       # None: the preset row's
      lr=0.1, momentum=0.9,
      weight_decay=placeholder(float),   # None: the preset row's
      samples_per_class=4,
      preset='cifar10',       # row of docs/method.md §4, with data.imbalance_factor
      # None: the value of the preset row; set, it overrides the row.
      las_head=placeholder(float), las_tail=placeholder(float),
      shift_bn=placeholder(bool), lr_factor=placeholder(float),
      las_shape='concave',    # concave | linear | convex | exp
      las_power=placeholder(float),     # needed by las_shape=exp only
      # mislas (docs/method.md §4) | crt (a re-initialised linear classifier, plain
      # CE) | lws (only the per-class scale, plain CE) | tau_norm |
      # posthoc_la (no training; τ chosen on the validation split, docs/method.md §8).
      # crt and lws: class-balanced batches, frozen trunk, no shift-BN.
      method='mislas',
      # tau_norm / posthoc_la: τ searched over 0, tau_step, ..., tau_max.
      tau_max=2.0, tau_step=0.1,
  ))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256, num_bins=15, many_threshold=100, few_threshold=20,
      plots=True,
      # With a validation split: evaluate on it every val_every steps (None:
      # once per epoch of the stage) and report the test metrics of the
      # best-on-validation parameters beside the final ones.
      select_on_val=True, val_every=placeholder(int),
  ))

  c.dlsa = dlsa.dlsa_config()
  return c
