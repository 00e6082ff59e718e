"""Every config key a run reads: default, type, allowed values, one-line
doc, declared once in `FIELDS` (dlsa.py holds DLSA's).

Files in configs/ start from `base_config()` and change values only, so a
misspelt override (`--config.stage1.lr_typo=1`) is rejected instead of being
silently ignored. A value that another one determines ("from the stage-2
preset", "1/√D") is a typed placeholder, `None` until
`config.resolve_and_validate` fills it in; the resolved config is what the run
uses and what it writes to `<workdir>/config.json`. The checks of single keys
come from here (schema.field_problems); rules.py holds those across keys.
"""

import dataclasses

import ml_collections

from lcreg_jax.config import dlsa
from lcreg_jax.config import presets
from lcreg_jax.config.schema import AT_LEAST_ONE
from lcreg_jax.config.schema import AT_LEAST_TWO
from lcreg_jax.config.schema import EPOCH_LIST
from lcreg_jax.config.schema import FACTOR
from lcreg_jax.config.schema import Field
from lcreg_jax.config.schema import FINITE
from lcreg_jax.config.schema import MOMENTUM
from lcreg_jax.config.schema import NONNEG
from lcreg_jax.config.schema import NONNEG_INT
from lcreg_jax.config.schema import POSITIVE
from lcreg_jax.config.schema import POSITIVE_INT
from lcreg_jax.config.schema import UNIT
from lcreg_jax.config import schema

_DOC_DATA_IMAGE_ROOT = (
  'source=list: image files streamed from disk, named by list files '
  '("relative/path label" per line, paths relative to image_root). '
  "source=tfds_stream: lists, where given, pick the build's records by file "
  'name (Places-LT from places365_small).'
)

_DOC_DATA_IMBALANCE_FACTOR = (
  'In-memory sources: the Cao et al. profile; 1 = as stored. List files are '
  'the long tail themselves: for source=list the factor only names the data '
  "set and picks the CIFAR presets' stage-2 row."
)

_DOC_DATA_TFDS_TEST_SPLIT = (
  "The build's splits for training / validation (None: none) / test."
)

_DOC_EVAL_SELECT_ON_VAL = (
  'With a validation split: evaluate on it every val_every steps (None: once'
  ' per epoch of the stage) and report the test metrics of the best-on-'
  'validation parameters beside the final ones.'
)

_DOC_MODEL_HEAD = (
  'linear (Dense with bias) | normed: s · cos(feature, w_c), the bias-free '
  'cosine classifier LDAM-DRW trains with (its NormedLinear), s = '
  "normed_scale (LDAM's 30; with stage1.loss=ldam it must equal "
  'stage1.ldam_scale, the loss then adds its margins to the cosines).'
)

_DOC_MODEL_PRETRAINED_DONT_LOAD = (
  'A torchvision-layout ResNet state dict (.safetensors, .npz; .pth with '
  "torch installed) for the backbone at the start of stage 1; None: random "
  'initialisation. Entries matching a regex in pretrained_dont_load (e.g. '
  "'params/backbone/stage4_block3/.*') keep their initial values."
)

_DOC_STAGE1_STEPS = 'None: from epochs; set, it wins over epochs'

_DOC_STAGE2_LAS_HEAD = (
  'None: the value of the preset row; set, it overrides the row.'
)

_DOC_STAGE2_TAU_MAX = (
  'tau_norm / posthoc_la: τ searched over 0, tau_step, ..., tau_max.'
)

# Grouped by section; ConfigDict lists keys sorted.
FIELDS = (
  # top level
  Field(
    'checkpoint_every',
    500,
    'steps between checkpoints (and at the end)',
    check=POSITIVE_INT,
  ),
  Field(
    'log_every',
    50,
    'steps between metric writes / NaN checks',
    check=POSITIVE_INT,
  ),
  Field(
    'num_devices',
    None,
    'None: every visible device',
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'seed',
    0,
    'initialisation, data order, mixup and augmentation draws',
    check=NONNEG_INT,
  ),
  Field(
    'shard_covariance',
    None,
    'Split the latent moments (M × D × D) along M over the devices '
    '(docs/method.md §9). None: when the covariance is full, there is '
    'more than one device and they divide M (JAX shards evenly only); '
    'otherwise replicated.',
    type=bool,
  ),
  # data
  Field(
    'data.augment',
    'crop_flip',
    'crop_flip | crop | flip | none (CIFAR-style, any source) | imagenet'
    ' (random-resized crop, flip, colour jitter; source=list)',
    choices=('crop_flip', 'crop', 'flip', 'none', 'imagenet'),
  ),
  Field(
    'data.channels',
    1,
    'image channels (1 for digits and Fashion-MNIST)',
    check=POSITIVE_INT,
  ),
  Field(
    'data.check_files', True, 'list: check every file exists before training'
  ),
  Field('data.data_dir', None, "None: the source's default location", type=str),
  Field(
    'data.digits_test_per_class',
    30,
    'digits: balanced test images per class',
    check=POSITIVE_INT,
  ),
  Field(
    'data.eval_resize',
    256,
    'augment=imagenet: shorter side before the crop',
    check=POSITIVE_INT,
  ),
  Field('data.image_root', None, _DOC_DATA_IMAGE_ROOT, type=str),
  Field(
    'data.image_size',
    8,
    'model input side (224 for ImageNet-scale data)',
    check=POSITIVE_INT,
  ),
  Field(
    'data.imbalance_factor',
    10.0,
    _DOC_DATA_IMBALANCE_FACTOR,
    check=AT_LEAST_ONE,
  ),
  Field('data.lt_seed', 0, _DOC_DATA_IMBALANCE_FACTOR, check=NONNEG_INT),
  Field(
    'data.name', None, 'for reports; None: derived from the source', type=str
  ),
  Field('data.num_classes', 10, 'C, the number of classes', check=AT_LEAST_TWO),
  Field(
    'data.on_bad_image',
    'stop',
    'list: stop | skip (and count) unreadable images',
    choices=('stop', 'skip'),
  ),
  Field(
    'data.pad', 4, 'crop: zero padding before the random crop', check=NONNEG_INT
  ),
  Field(
    'data.source',
    'digits',
    'digits | idx | cifar10 | cifar100 | tfds (in memory) | list | '
    'tfds_stream (a prepared TFDS build, ArrayRecord, streamed by index)',
    choices=(
      'digits',
      'idx',
      'cifar10',
      'cifar100',
      'tfds',
      'list',
      'tfds_stream',
    ),
  ),
  Field('data.test_list', None, _DOC_DATA_IMAGE_ROOT, type=str),
  Field(
    'data.tfds_data_dir',
    None,
    "the prepared TFDS directory (None: TFDS's default)",
    type=str,
  ),
  Field(
    'data.tfds_name',
    None,
    'source=tfds or tfds_stream: the TFDS data set name',
    type=str,
  ),
  Field('data.tfds_test_split', 'test', _DOC_DATA_TFDS_TEST_SPLIT),
  Field('data.tfds_train_split', 'train', _DOC_DATA_TFDS_TEST_SPLIT),
  Field('data.tfds_val_split', None, _DOC_DATA_TFDS_TEST_SPLIT, type=str),
  Field('data.train_list', None, _DOC_DATA_IMAGE_ROOT, type=str),
  Field('data.val_list', None, _DOC_DATA_IMAGE_ROOT, type=str),
  Field(
    'data.val_per_class',
    0,
    'per-class validation images carved from train',
    check=NONNEG_INT,
  ),
  # eval
  Field(
    'eval.batch_size', 256, 'evaluation batch (global)', check=POSITIVE_INT
  ),
  Field(
    'eval.few_threshold',
    20,
    'few-shot: fewer training images than this',
    check=NONNEG_INT,
  ),
  Field(
    'eval.many_threshold',
    100,
    'many-shot: more training images than this',
    check=NONNEG_INT,
  ),
  Field(
    'eval.num_bins', 15, 'equal-width bins of ECE and MCE', check=POSITIVE_INT
  ),
  Field('eval.plots', True, "write each stage's plots"),
  Field(
    'eval.select_metric',
    'class_mean',
    'Score of every choice made on validation (best-on-val step, τ of '
    "tau_norm / posthoc_la, DLSA's checkpoints): 'class_mean' (the mean "
    "of per-class top-1, as classifier-balancing; the test set is "
    "balanced, a carved validation split is not) or 'image_mean' (top-1 "
    'over images). Equal on a balanced validation list.',
    choices=('class_mean', 'image_mean'),
  ),
  Field('eval.select_on_val', True, _DOC_EVAL_SELECT_ON_VAL),
  Field(
    'eval.val_every',
    None,
    _DOC_EVAL_SELECT_ON_VAL,
    type=int,
    check=POSITIVE_INT,
  ),
  # model
  Field(
    'model.backbone',
    'resnet32',
    'resnet8 | resnet32 | resnet10 | resnet50 | resnet152',
    choices=('resnet10', 'resnet152', 'resnet32', 'resnet50', 'resnet8'),
  ),
  Field(
    'model.class_isda',
    'none',
    'Class-wise ISDA baseline (docs/method.md §8): none | diagonal | '
    'full, the form of the per-class feature covariances (C × D, or C × '
    'D × D: small C only; 16 GB at C = 1000, D = 2048). On, stage 1 '
    "trains on ISDA's bound over the C classes (λ = stage1.isda_lambda0 "
    '· t/T); it needs latent.enabled=False, plain CE and no mixup. A '
    'model key because the moments are part of the train state that '
    'stage 2 restores.',
    choices=('none', 'diagonal', 'full'),
  ),
  Field(
    'model.classify_on',
    'sum',
    'sum = GAP(F + F̂) | feature | reconstruction',
    choices=('sum', 'feature', 'reconstruction'),
  ),
  Field(
    'model.dtype',
    'float32',
    'float32 | bfloat16 (convolutions only)',
    choices=('float32', 'bfloat16'),
  ),
  Field('model.head', 'linear', _DOC_MODEL_HEAD, choices=('linear', 'normed')),
  Field(
    'model.init',
    'authors',
    "authors: as the authors' PyTorch code (docs/method.md §2): convs "
    'an untruncated He normal, over the fan-in for resnet8/32 (whose '
    'linear head is He normal too), over the fan-out for resnet10/50/152'
    " (whose head keeps PyTorch's default Linear init); biases and the "
    "latent module's E and G as PyTorch's default Linear. flax: flax's "
    'defaults (truncated He normal convs, LeCun normal kernels, zero '
    'biases), the init of every run before this key.',
    choices=('authors', 'flax'),
  ),
  Field('model.normed_scale', 30.0, _DOC_MODEL_HEAD, check=POSITIVE),
  Field('model.pretrained_dont_load', (), _DOC_MODEL_PRETRAINED_DONT_LOAD),
  Field(
    'model.pretrained_weights', None, _DOC_MODEL_PRETRAINED_DONT_LOAD, type=str
  ),
  Field(
    'model.shortcut',
    'A',
    'ResNet-32 shortcut: A (zero-padded identity) | B (projection)',
    choices=('A', 'B'),
  ),
  Field(
    'model.trainable_blocks',
    None,
    'None: the whole backbone learns. k: only its last k residual blocks'
    ' do; the stem and earlier blocks are frozen (no gradient, BatchNorm'
    " in inference mode), as for Places-LT's ImageNet trunk.",
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'model.zero_init_residual',
    False,
    "zero the scale of each residual branch's last BatchNorm, so every "
    "block starts as the identity (torchvision's zero_init_residual; "
    'False in MiSLAS). Runs before model.init existed had it on for '
    'the bottleneck backbones (resnet50, resnet152) only.',
  ),
  # model.latent
  Field(
    'model.latent.covariance',
    'full',
    'full | diagonal',
    choices=('full', 'diagonal'),
  ),
  Field(
    'model.latent.enabled', True, 'the LCReg latent module (False: MiSLAS)'
  ),
  Field(
    'model.latent.explicit_latent_aug',
    False,
    'reconstruct from Z + ε, ε ~ N(0, λΣ), in training',
  ),
  Field(
    'model.latent.num_latents',
    40,
    'M, the number of latent categories',
    check=POSITIVE_INT,
  ),
  Field(
    'model.latent.recon_normalize',
    False,
    'reconstruction loss on L2-normalised rows',
  ),
  Field(
    'model.latent.recon_temperature',
    1.0,
    'recon_normalize: the temperature',
    check=POSITIVE,
  ),
  Field(
    'model.latent.similarity_scale',
    None,
    "None: 1/√D (D = channels of the backbone map); the paper's literal "
    'form is 1.',
    type=float,
    check=POSITIVE,
  ),
  Field(
    'model.latent.tau_assign',
    1.0,
    'τ of the assignment softmax (eq. 2)',
    check=POSITIVE,
  ),
  # stage1
  Field('stage1.alpha', 0.1, 'eq. 7 weights of aug, recon, cls', check=NONNEG),
  Field('stage1.batch_size', 128, 'global batch', check=POSITIVE_INT),
  Field('stage1.beta', 0.1, 'eq. 7 weights of aug, recon, cls', check=NONNEG),
  Field(
    'stage1.cosine_update',
    'per_epoch',
    'schedule=cosine: per_epoch (MiSLAS): lr/2 (1 + cos(π e / E)) set '
    'at the start of epoch e of E, constant within it; per_step: the '
    'same curve in the step, decayed every step.',
    choices=('per_epoch', 'per_step'),
  ),
  Field(
    'stage1.decay_epochs',
    (160.0, 180.0),
    'schedule=step: epochs at which the lr decays',
    check=EPOCH_LIST,
  ),
  Field(
    'stage1.decay_factor',
    0.1,
    'schedule=step: factor of each decay',
    check=FACTOR,
  ),
  Field(
    'stage1.drw_epoch',
    160.0,
    'drw: the weights switch on at step round(drw_epoch · steps/epoch).',
    check=NONNEG,
  ),
  Field('stage1.enabled', True, 'train stage 1'),
  Field('stage1.epochs', 200.0, 'length of stage 1 in epochs', check=POSITIVE),
  Field('stage1.focal_gamma', 1.0, 'focal: γ (0 = CE)', check=NONNEG),
  Field('stage1.gamma', 1.0, 'eq. 7 weights of aug, recon, cls', check=NONNEG),
  Field(
    'stage1.isda_lambda0',
    0.5,
    'λ0 of the latent and the class-wise ISDA',
    check=NONNEG,
  ),
  Field(
    'stage1.la_tau',
    1.0,
    'logit_adjusted: τ of CE(z + τ log π, y)',
    check=FINITE,
  ),
  Field(
    'stage1.ldam_max_margin', 0.5, 'ldam: largest margin, s', check=POSITIVE
  ),
  Field('stage1.ldam_scale', 30.0, 'ldam: largest margin, s', check=POSITIVE),
  Field(
    'stage1.loss',
    'ce',
    'The classification loss L_cls (docs/method.md §8 baselines): ce '
    '(MiSLAS) | focal | ldam | balanced_softmax | logit_adjusted; under '
    'mixup each is λ loss(y) + (1-λ) loss(y[perm]).',
    choices=('ce', 'focal', 'ldam', 'balanced_softmax', 'logit_adjusted'),
  ),
  Field('stage1.lr', 0.1, 'peak learning rate', check=POSITIVE),
  Field('stage1.mixup_alpha', 1.0, '0: no mixup', check=NONNEG),
  Field(
    'stage1.mixup_partners',
    'global',
    'global: partners from the whole global batch (as one process of '
    "MiSLAS mixes its batch); per_device: from the same device's rows "
    '(as DistributedDataParallel processes do, and big_vision), which '
    'avoids gathering the batch across devices and hosts.',
    choices=('global', 'per_device'),
  ),
  Field('stage1.momentum', 0.9, 'SGD momentum', check=MOMENTUM),
  Field(
    'stage1.reweight',
    'none',
    'Class weights of L_cls: none | effective_number (Cui et al., from '
    'the first step) | drw (weights 1 until drw_epoch, then effective-'
    'number).',
    choices=('none', 'effective_number', 'drw'),
  ),
  Field(
    'stage1.reweight_beta',
    0.9999,
    'β of the effective number (1-β^n)/(1-β)',
    check=MOMENTUM,
  ),
  Field(
    'stage1.schedule',
    'step',
    'step | cosine (see cosine_update)',
    choices=('step', 'cosine'),
  ),
  Field('stage1.steps', None, _DOC_STAGE1_STEPS, type=int, check=POSITIVE_INT),
  Field(
    'stage1.warmup',
    'per_epoch',
    'per_epoch (MiSLAS): lr·(e + 1)/warmup_epochs, set at the start of '
    'epoch e (a whole number of warm-up epochs); per_iteration: linear '
    'in the step, lr·(t + 1)/warmup_steps (any fraction of an epoch).',
    choices=('per_epoch', 'per_iteration'),
  ),
  Field(
    'stage1.warmup_epochs',
    5.0,
    'schedule=step: warm-up length in epochs',
    check=NONNEG,
  ),
  Field('stage1.weight_decay', 0.0002, 'L2 weight decay', check=NONNEG),
  # stage2
  Field(
    'stage2.batch_size',
    None,
    "None: the preset row's",
    type=int,
    check=POSITIVE_INT,
  ),
  Field('stage2.enabled', True, 'train stage 2'),
  Field(
    'stage2.epoch_length',
    'train_set',
    'train_set: an epoch of class-balanced batches is about N_train '
    "samples, counted as the authors' loops count it (MiSLAS: "
    'ceil(N/B)+1 steps; cRT, LWS: floor(N/B)) | sampler: the whole '
    'class-aware sampler, max_c n_c x C samples (about 4x longer at IF '
    '100)',
    choices=('train_set', 'sampler'),
  ),
  Field('stage2.epochs', 10.0, 'length of stage 2 in epochs', check=POSITIVE),
  Field(
    'stage2.init_from', None, 'None: <workdir>/stage1/checkpoints', type=str
  ),
  Field('stage2.las_head', None, _DOC_STAGE2_LAS_HEAD, type=float, check=UNIT),
  Field(
    'stage2.las_power',
    None,
    'needed by las_shape=exp only',
    type=float,
    check=POSITIVE,
  ),
  Field(
    'stage2.las_shape',
    'concave',
    'concave | linear | convex | exp',
    choices=('concave', 'linear', 'convex', 'exp'),
  ),
  Field('stage2.las_tail', None, _DOC_STAGE2_LAS_HEAD, type=float, check=UNIT),
  Field(
    'stage2.lr',
    0.1,
    'base learning rate (cosine over the stage)',
    check=POSITIVE,
  ),
  Field(
    'stage2.lr_factor',
    None,
    "None: the preset row; the classifier's lr factor",
    type=float,
    check=NONNEG,
  ),
  Field(
    'stage2.method',
    'mislas',
    'mislas (docs/method.md §4) | crt (a re-initialised linear '
    'classifier, plain CE) | lws (only the per-class scale, plain CE) | '
    'tau_norm | posthoc_la (no training; τ chosen on the validation '
    'split, docs/method.md §8). crt and lws: class-balanced batches, '
    'frozen trunk, no shift-BN.',
    choices=('mislas', 'crt', 'lws', 'tau_norm', 'posthoc_la'),
  ),
  Field('stage2.momentum', 0.9, 'SGD momentum', check=MOMENTUM),
  Field(
    'stage2.preset',
    'cifar10',
    'row of docs/method.md §4, with data.imbalance_factor',
    choices=presets.STAGE2_PRESET_NAMES,
  ),
  Field(
    'stage2.samples_per_class',
    4,
    'class-balanced sampler: consecutive samples per class',
    check=POSITIVE_INT,
  ),
  Field(
    'stage2.shift_bn',
    None,
    'None: the preset row; re-estimate BatchNorm statistics on balanced '
    'batches',
    type=bool,
  ),
  Field('stage2.steps', None, _DOC_STAGE1_STEPS, type=int, check=POSITIVE_INT),
  Field('stage2.tau_max', 2.0, _DOC_STAGE2_TAU_MAX, check=NONNEG),
  Field('stage2.tau_step', 0.1, _DOC_STAGE2_TAU_MAX, check=POSITIVE),
  Field(
    'stage2.weight_decay',
    None,
    "None: the preset row's",
    type=float,
    check=NONNEG,
  ),
)


# Every key with its full dotted name, DLSA's under 'dlsa.'.
ALL_FIELDS = FIELDS + tuple(
  dataclasses.replace(f, key=f'dlsa.{f.key}') for f in dlsa.FIELDS
)


def base_config() -> ml_collections.ConfigDict:
  c = schema.build(FIELDS)
  c.dlsa = dlsa.dlsa_config()
  return c
