"""Defaults of every DLSA knob (docs/method.md §6).

The defaults are the authors' code (silicx/DLSA); every deviation the project
offers is a switch whose non-default value is named in its doc.
"""

import ml_collections

from lcreg_jax.config import schema
from lcreg_jax.config.schema import Field
from lcreg_jax.config.schema import MOMENTUM
from lcreg_jax.config.schema import NONNEG
from lcreg_jax.config.schema import NONNEG_INT
from lcreg_jax.config.schema import OPEN_UNIT
from lcreg_jax.config.schema import POSITIVE
from lcreg_jax.config.schema import POSITIVE_INT
from lcreg_jax.config.schema import UNIT

# Knobs the authors set per data set (their config/*.yaml). A key left None
# in `dlsa_config()` takes the value of the row of `config.data.name`, or of
# 'default' for other data sets (resolved in config/resolve.py). Depth: the
# authors use 3 only on PaCo features (ImageNet-LT PaCo bsm/cbs/m2m/ride,
# iNaturalist PaCo) and 1 on CE/CBS features and on Places-LT; our stage-1
# features are CE-trained (MiSLAS/LCReg), so ImageNet-LT and Places-LT get 1
# and iNaturalist (their only config is PaCo) 3.
DATASET_PRESETS = {
  'default': dict(
    depth=1, nll_weight=1.0, purity_weight=0.02, balance_weight=1.0
  ),
  'imagenet_lt': dict(
    depth=1, nll_weight=2.0, purity_weight=0.02, balance_weight=1.0
  ),
  'places_lt': dict(
    depth=1, nll_weight=1.0, purity_weight=0.03, balance_weight=2.0
  ),
  'inat2018': dict(
    depth=3, nll_weight=1.0, purity_weight=0.02, balance_weight=1.0
  ),
}
PRESET_FIELDS = ('depth', 'nll_weight', 'purity_weight', 'balance_weight')


def preset_row(dataset_name: str) -> dict:
  """The authors' per-data-set values for `dataset_name` (DATASET_PRESETS)."""
  return DATASET_PRESETS.get(dataset_name, DATASET_PRESETS['default'])


# ConfigDict lists keys sorted.
FIELDS = (
  # dlsa
  Field(
    'balance_weight',
    None,
    'λ_b; None: DATASET_PRESETS (1; 2 on Places-LT).',
    type=float,
    check=NONNEG,
  ),
  Field(
    'balanced_softmax_tiny',
    1e-12,
    'Balanced softmax uses logits + log(n_c + tiny): classes absent from'
    ' a routed subset get a ~-27.6 offset, so their softmax mass and '
    'gradient vanish instead of producing log 0.',
    check=POSITIVE,
  ),
  Field('bn_eps', 1e-05, "the flow BatchNorm's epsilon", check=POSITIVE),
  Field(
    'bn_momentum',
    0.9,
    'Running stats: m <- momentum m + (1 - momentum) batch.',
    check=MOMENTUM,
  ),
  Field(
    'bn_unbiased_var',
    True,
    "True (authors): the flow BatchNorm's batch variance is the unbiased"
    ' one (PyTorch x.var(0)), in the normalisation, the log-determinant '
    'and the running average. False: the biased one (the former form).',
  ),
  Field(
    'center_std',
    0.05,
    'std of the fixed random cluster centres',
    check=POSITIVE,
  ),
  Field(
    'classifier_batch_size',
    128,
    'batch of the DLSA classifiers (authors: 128; the former form 256)',
    check=POSITIVE_INT,
  ),
  Field(
    'classifier_epochs',
    150,
    'Epochs of each DLSA classifier while classifier_steps is None '
    '(authors: 150 passes over the shuffled training subset, the last '
    'partial batch included).',
    check=POSITIVE_INT,
  ),
  Field(
    'classifier_eval_epochs',
    5,
    'Epochs between validation checks of a classifier trained by epochs '
    "(authors' eval_freq 5).",
    check=POSITIVE_INT,
  ),
  Field(
    'classifier_init',
    'torch',
    "Linear layers' initialisation: 'torch' (authors: PyTorch's default,"
    ' weight and bias U(±1/√fan_in)) or "zeros" (the former form).',
    choices=('torch', 'zeros'),
  ),
  Field('classifier_lr', 0.01, 'Constant learning rate.', check=POSITIVE),
  Field(
    'classifier_optimizer',
    'sgd',
    "'sgd' (authors: plain SGD, no momentum, no weight decay) or 'adamw'"
    ' (the former form, with classifier_weight_decay).',
    choices=('sgd', 'adamw'),
  ),
  Field(
    'classifier_steps',
    None,
    'None (authors): train classifier_epochs epochs. An int (the former '
    'form: 1000): that many steps of batches drawn with replacement, '
    'checked every eval_every steps.',
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'classifier_weight_decay',
    0.0001,
    "AdamW's weight decay (classifier_optimizer='adamw' only)",
    check=NONNEG,
  ),
  Field(
    'cluster_prior_from',
    'all',
    'Training samples whose clusters make the (K, C) cluster prior of a '
    "stage: 'all' (authors: every training sample under the stage's "
    "flow) or 'routed' (only the samples the stage takes).",
    choices=('all', 'routed'),
  ),
  Field(
    'depth',
    None,
    'Routing. depth None: DATASET_PRESETS (1, or 3 on iNaturalist).',
    type=int,
    check=NONNEG_INT,
  ),
  Field(
    'depth0_control',
    True,
    'Also train the final classifier alone on all training samples '
    "(depth 0, no routing) and report it as stage 'dlsa_depth0' beside "
    'DLSA.',
  ),
  Field(
    'ema_decay',
    0.7,
    'EMA of batch-mean posteriors (bias-corrected).',
    check=MOMENTUM,
  ),
  Field('enabled', False, 'run DLSA after stage 1 (docs/dlsa.md)'),
  Field(
    'eval_chunk', 4096, 'Rows per jitted inference call.', check=POSITIVE_INT
  ),
  Field(
    'eval_every',
    250,
    'Steps between log lines, and between validation checks of '
    'classifiers trained by steps (classifier_steps set).',
    check=POSITIVE_INT,
  ),
  Field(
    'final_balanced_softmax', True, 'False: plain CE for the final classifier.'
  ),
  Field(
    'final_classifier',
    'lin_lin',
    "Form of the final classifier: 'lin_lin' (authors: Lin_x(x) + "
    "Lin_z(x), two independently initialised layers on the same x) or "
    "'linear' (one layer, the former form).",
    choices=('lin_lin', 'linear'),
  ),
  Field(
    'final_counts',
    'full',
    "Label counts of the final classifier's balanced softmax: 'full' "
    "(authors: all training samples) or 'remaining' (the samples no "
    'stage took).',
    choices=('full', 'remaining'),
  ),
  Field(
    'final_trained_on',
    'remaining',
    "The final classifier learns from the training samples no stage took "
    "('remaining', authors) or from all of them ('all', this project's: a "
    'class whose training samples a stage took whole is otherwise unknown '
    'to it, and its test samples the stage leaves score 0; docs/dlsa.md). '
    'Either way it predicts only what no stage took.',
    choices=('remaining', 'all'),
  ),
  Field(
    'flow_batch_size',
    256,
    'Pairs per step (2x samples through the flow).',
    check=POSITIVE_INT,
  ),
  Field(
    'flow_eval_every',
    None,
    'Steps between flow-selection checks; None (authors): once per epoch'
    ' of the flow, ceil(N / flow_batch_size) steps for its N training '
    'samples (the former form: 250).',
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'flow_grad_clip',
    None,
    "Global-norm clip of the flow's gradients; None: no clipping (authors).",
    type=float,
    check=POSITIVE,
  ),
  Field(
    'flow_lr',
    0.2,
    'Flow training (authors: plain SGD, constant lr 0.2, no momentum, no'
    ' clipping; 50 epochs of N pairs at batch 1024 = 50 N / 1024 steps).',
    check=POSITIVE,
  ),
  Field(
    'flow_momentum',
    0.0,
    'SGD momentum of the flow (authors: 0)',
    check=MOMENTUM,
  ),
  Field(
    'flow_per_stage',
    True,
    'True (authors): a fresh flow is trained on the remaining training '
    'samples at every stage (depth times the flow cost). False: one flow'
    ' ranks all stages (stage s takes the top fraction of what stages < '
    's left).',
  ),
  Field(
    'flow_schedule',
    'constant',
    "'constant' or 'cosine' (decay to 0).",
    choices=('cosine', 'constant'),
  ),
  Field(
    'flow_select_metric',
    'authors',
    "Flow checkpoint selection. 'authors': the number of clusters with "
    'purity > select_min_purity and more than select_min_size samples, '
    'rejecting flows whose largest cluster reaches select_cap, counted '
    "on the flow's own training samples as the authors do (it reads no "
    'test labels). On the validation split: '
    "'purity' = classic purity of the val clustering (Σ_k max_c n_kc / "
    "N); 'heldout' = accuracy on val of the majority training class of "
    'each cluster (not inflated by tiny clusters).',
    choices=('authors', 'purity', 'heldout'),
  ),
  Field(
    'flow_separate_passes',
    True,
    'The positives and the negatives go through the flow in two train-'
    'mode passes, each with its own BatchNorm batch statistics '
    '(authors); False: one pass over the concatenated pairs.',
  ),
  Field(
    'flow_steps',
    1500,
    'flow training steps per routing stage',
    check=POSITIVE_INT,
  ),
  Field(
    'hidden_dim',
    None,
    'None: D, the feature dimension.',
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'made_out_scale',
    None,
    "None (authors): every MADE layer has PyTorch's default init "
    '(weight and bias U(±1/√fan_in)). A number (the former form: 0.01): '
    'LeCun-'
    'normal hidden layers, zero biases, and the output layer at that '
    'scale, starting the flow near the identity.',
    type=float,
    check=POSITIVE,
  ),
  Field(
    'mask_absent_classes',
    True,
    "At inference add log(1[n_c > 0] + tiny) to a stage's logits: a "
    'class the stage never saw keeps its untrained logit otherwise.',
  ),
  Field(
    'nll_per_dim',
    False,
    'False (authors): the full D-dimensional NLL. True: nats per '
    'dimension (NLL / D), so lr and term weights need no retuning when D'
    ' changes.',
  ),
  Field(
    'nll_weight',
    None,
    "λ_lh, the NLL term's weight; None: DATASET_PRESETS (2 on ImageNet-LT).",
    type=float,
    check=NONNEG,
  ),
  Field(
    'nll_weight_norm',
    'classes',
    "Normalisation of those weights: 'classes' (authors: Σ_c w_c = 1, so"
    " they average 1/C) or 'samples' (Σ_c n_c w_c = N: the weighted NLL "
    "of uniformly drawn samples keeps the plain NLL's scale).",
    choices=('classes', 'samples'),
  ),
  Field(
    'nll_weight_power',
    2.0,
    'Class weights ∝ (n_max / n_c)^power.',
    check=NONNEG,
  ),
  Field(
    'num_blocks',
    2,
    'Flow filter: 2 MADE blocks, each followed by a flow BatchNorm.',
    check=POSITIVE_INT,
  ),
  Field(
    'num_clusters',
    500,
    'Prior: K unit-variance Gaussians, centres N(0, center_std^2 I), fixed.',
    check=POSITIVE_INT,
  ),
  Field(
    'pair_sampling',
    'class_uniform',
    "Pairs: 'class_uniform' (authors: two distinct classes drawn "
    "uniformly, then one sample of each) or 'sample_uniform' (positive "
    'uniform over samples, negative uniform over the samples of the '
    'other classes).',
    choices=('class_uniform', 'sample_uniform'),
  ),
  Field('purity_margin', 2.0, 'hinge_ce only.', check=NONNEG),
  Field(
    'purity_type',
    'neg_ce',
    "'hinge_ce': relu(log K + purity_margin - H(sg(p_pos), p_neg)), i.e."
    " push the soft cross-entropy of the negative's posterior against "
    "the positive's (stop-gradient) posterior above that of a uniform "
    "posterior by a margin. 'overlap': -log(1 - sum_k sg(p_pos)_k "
    'p_neg_k), the NLL of "different clusters". Minimising the plain '
    'cross-entropy would pull the pair into the same cluster, the '
    "opposite of purity, hence the sign. 'neg_ce' (authors): mean_i Σ_k "
    'sg(p_pos,i)_k log p_neg,i,k, linear and unbounded below; minimising'
    " it lowers the negative's log posterior where the positive's "
    'posterior is high.',
    choices=('neg_ce', 'hinge_ce', 'overlap'),
  ),
  Field(
    'purity_weight',
    None,
    'λ_p; None: DATASET_PRESETS (0.02; 0.03 on Places-LT).',
    type=float,
    check=NONNEG,
  ),
  Field(
    'seed', 0, "seed of DLSA's flows, pairs and classifiers", check=NONNEG_INT
  ),
  Field(
    'select_cap',
    5000,
    'flow_select_metric=authors: a flow whose largest cluster holds this'
    " many samples or more is rejected (authors' fixed 5000). None: the "
    'cap is N / K * select_cap_factor (largest cluster at most that; the'
    ' former form).',
    type=int,
    check=POSITIVE_INT,
  ),
  Field(
    'select_cap_factor',
    20.0,
    'select_cap None: largest cluster at most N / K times this',
    check=POSITIVE,
  ),
  Field(
    'select_min_purity',
    0.7,
    "flow_select_metric=authors: a cluster's purity must exceed this",
    check=UNIT,
  ),
  Field(
    'select_min_size',
    10,
    'flow_select_metric=authors: and its size this',
    check=NONNEG_INT,
  ),
  Field(
    'stage_prior_correction',
    'off',
    'The cluster-aided stages train balanced softmax with the routed '
    "subset's counts n_c,s. At inference their logits may add log(n_c,s "
    "/ n_c) (the stage's label prior relative to the full one): 'off' "
    "(authors), 'on', or 'val' (per stage, whichever of off/on scores "
    "higher on the stage's validation samples by eval.select_metric).",
    choices=('off', 'on', 'val'),
  ),
  Field(
    'standardize',
    True,
    'Features are standardised with the training mean/std before the '
    'flow and the classifiers: stage-1 features are post-ReLU with '
    'arbitrary scale, and a constant affine map only shifts log p, so '
    'routing is unaffected.',
  ),
  Field(
    'top_fraction',
    0.3,
    'share of the remaining training samples (by log p) each routing '
    'stage takes',
    check=OPEN_UNIT,
  ),
  Field(
    'use_flow_latent',
    False,
    'Classifiers (cluster-aided per stage, ordinary linear at the end). '
    'z in Lin_zp([z; p_cluster]): x or f(x).',
  ),
  Field(
    'val_per_class',
    20,
    'Per-class size of the validation split carved from the stage-1 '
    'training features when the data set has none (at most n_c // 5; '
    'never from test).',
    check=NONNEG_INT,
  ),
)


def dlsa_config() -> ml_collections.ConfigDict:
  """All DLSA settings; the defaults run in about a minute on 2 CPU cores."""
  return schema.build(FIELDS)


def with_preset(
  cfg: ml_collections.ConfigDict, dataset_name: str = 'default'
) -> ml_collections.ConfigDict:
  """cfg with its None per-data-set keys filled from DATASET_PRESETS.

  The one fill: config/resolve.py calls it on full configs (with
  config.data.name), and run_dlsa on a bare dlsa section (direct callers:
  tests, notebooks).
  """
  row = preset_row(dataset_name)
  for field in PRESET_FIELDS:
    if cfg[field] is None:
      cfg[field] = row[field]
  return cfg
