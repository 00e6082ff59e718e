"""Defaults of every DLSA knob (docs/method.md §6).

The defaults are the authors' code (silicx/DLSA); every deviation the project
offers is a switch whose non-default value is named in the comment.
"""

import ml_collections
from ml_collections.config_dict import placeholder

# Knobs the authors set per data set (their config/*.yaml). A key left None
# in `dlsa_config()` takes the value of the row of `config.data.name`, or of
# 'default' for other data sets (resolved in config/validate.py). Depth: the
# authors use 3 only on PaCo features (ImageNet-LT PaCo bsm/cbs/m2m/ride,
# iNaturalist PaCo) and 1 on CE/CBS features and on Places-LT; our stage-1
# features are CE-trained (MiSLAS/LCReg), so ImageNet-LT and Places-LT get 1
# and iNaturalist (their only config is PaCo) 3.
DATASET_PRESETS = {
    'default': dict(depth=1, nll_weight=1.0, purity_weight=0.02,
                    balance_weight=1.0),
    'imagenet_lt': dict(depth=1, nll_weight=2.0, purity_weight=0.02,
                        balance_weight=1.0),
    'places_lt': dict(depth=1, nll_weight=1.0, purity_weight=0.03,
                      balance_weight=2.0),
    'inat2018': dict(depth=3, nll_weight=1.0, purity_weight=0.02,
                     balance_weight=1.0),
}
PRESET_FIELDS = ('depth', 'nll_weight', 'purity_weight', 'balance_weight')


def preset_row(dataset_name: str) -> dict:
  """The authors' per-data-set values for `dataset_name` (DATASET_PRESETS)."""
  return DATASET_PRESETS.get(dataset_name, DATASET_PRESETS['default'])


def dlsa_config() -> ml_collections.ConfigDict:
  """All DLSA settings; the defaults run in about a minute on 2 CPU cores."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  # Per-class size of the validation split carved from the stage-1 training
  # features when the data set has none (at most n_c // 5; never from test).
  c.val_per_class = 20
  c.seed = 0
  # Features are standardised with the training mean/std before the flow and
  # the classifiers: stage-1 features are post-ReLU with arbitrary scale, and
  # a constant affine map only shifts log p, so routing is unaffected.
  c.standardize = True

  # Routing. depth None: DATASET_PRESETS (1, or 3 on iNaturalist).
  c.depth = placeholder(int)
  c.top_fraction = 0.3
  # True (authors): a fresh flow is trained on the remaining training
  # samples at every stage (depth times the flow cost). False: one flow
  # ranks all stages (stage s takes the top fraction of what stages < s
  # left).
  c.flow_per_stage = True
  # Training samples whose clusters make the (K, C) cluster prior of a
  # stage: 'all' (authors: every training sample under the stage's flow) or
  # 'routed' (only the samples the stage takes).
  c.cluster_prior_from = 'all'
  # Also train the final classifier alone on all training samples (depth 0,
  # no routing) and report it as stage 'dlsa_depth0' beside DLSA.
  c.depth0_control = True

  # Flow filter: 2 MADE blocks, each followed by a flow BatchNorm.
  c.num_blocks = 2
  c.hidden_dim = placeholder(int)  # None: D, the feature dimension.
  c.bn_momentum = 0.9  # Running stats: m <- momentum m + (1 - momentum) batch.
  c.bn_eps = 1e-5
  # Prior: K unit-variance Gaussians, centres N(0, center_std^2 I), fixed.
  c.num_clusters = 500
  c.center_std = 0.05

  # Flow training (authors: plain SGD, constant lr 0.2, no momentum, no
  # clipping; 50 epochs of N pairs at batch 1024 = 50 N / 1024 steps).
  c.flow_lr = 0.2
  c.flow_momentum = 0.0
  c.flow_schedule = 'constant'  # 'constant' or 'cosine' (decay to 0).
  # Global-norm clip of the flow's gradients; None: no clipping (authors).
  c.flow_grad_clip = ml_collections.FieldReference(None, field_type=float)
  c.flow_steps = 1500
  c.flow_batch_size = 256  # Pairs per step (2x samples through the flow).
  # Pairs: 'class_uniform' (authors: two distinct classes drawn uniformly,
  # then one sample of each) or 'sample_uniform' (positive uniform over
  # samples, negative uniform over the samples of the other classes).
  c.pair_sampling = 'class_uniform'
  c.nll_weight_power = 2.0  # Class weights ∝ (n_max / n_c)^power.
  # Normalisation of those weights: 'classes' (authors: Σ_c w_c = 1, so they
  # average 1/C) or 'samples' (Σ_c n_c w_c = N: the weighted NLL of
  # uniformly drawn samples keeps the plain NLL's scale).
  c.nll_weight_norm = 'classes'
  # λ_lh, the NLL term's weight; None: DATASET_PRESETS (2 on ImageNet-LT).
  c.nll_weight = placeholder(float)
  # False (authors): the full D-dimensional NLL. True: nats per dimension
  # (NLL / D), so lr and term weights need no retuning when D changes.
  c.nll_per_dim = False
  # The positives and the negatives go through the flow in two train-mode
  # passes, each with its own BatchNorm batch statistics (authors); False:
  # one pass over the concatenated pairs.
  c.flow_separate_passes = True
  # λ_p; None: DATASET_PRESETS (0.02; 0.03 on Places-LT).
  c.purity_weight = placeholder(float)
  # 'hinge_ce': relu(log K + purity_margin - H(sg(p_pos), p_neg)), i.e. push
  # the soft cross-entropy of the negative's posterior against the positive's
  # (stop-gradient) posterior above that of a uniform posterior by a margin.
  # 'overlap': -log(1 - sum_k sg(p_pos)_k p_neg_k), the NLL of "different
  # clusters". Minimising the plain cross-entropy would pull the pair into
  # the same cluster, the opposite of purity, hence the sign.
  # 'neg_ce' (authors): mean_i Σ_k sg(p_pos,i)_k log p_neg,i,k, linear and
  # unbounded below; minimising it lowers the negative's log posterior where
  # the positive's posterior is high.
  c.purity_type = 'neg_ce'
  c.purity_margin = 2.0  # hinge_ce only.
  # λ_b; None: DATASET_PRESETS (1; 2 on Places-LT).
  c.balance_weight = placeholder(float)
  c.ema_decay = 0.7  # EMA of batch-mean posteriors (bias-corrected).
  # Flow checkpoint selection. 'authors': the number of clusters with purity
  # > select_min_purity and more than select_min_size samples, rejecting
  # flows whose largest cluster exceeds N / K * select_cap_factor, counted
  # on the flow's own training samples as the authors do (it reads no test
  # labels; the authors' fixed cap of 5000 is ~ N / K * 20 on ImageNet-LT).
  # On the validation split: 'purity' = classic purity of the val clustering
  # (Σ_k max_c n_kc / N); 'heldout' = accuracy on val of the majority
  # training class of each cluster (not inflated by tiny clusters).
  c.flow_select_metric = 'authors'
  c.select_min_purity = 0.7
  c.select_min_size = 10
  c.select_cap_factor = 20.0

  # Classifiers (cluster-aided per stage, ordinary linear at the end).
  c.use_flow_latent = False  # z in Lin_zp([z; p_cluster]): x or f(x).
  c.classifier_steps = 1000
  c.classifier_lr = 1e-2  # AdamW.
  c.classifier_weight_decay = 1e-4
  c.classifier_batch_size = 256
  # Balanced softmax uses logits + log(n_c + tiny): classes absent from a
  # routed subset get a ~-27.6 offset, so their softmax mass and gradient
  # vanish instead of producing log 0.
  c.balanced_softmax_tiny = 1e-12
  # At inference add log(1[n_c > 0] + tiny) to a stage's logits: a class the
  # stage never saw keeps its untrained logit otherwise.
  c.mask_absent_classes = True
  c.final_balanced_softmax = True  # False: plain CE for the final classifier.
  # Label counts of the final classifier's balanced softmax: 'full' (authors:
  # all training samples) or 'remaining' (the samples no stage took).
  c.final_counts = 'full'
  # The cluster-aided stages train balanced softmax with the routed subset's
  # counts n_c,s. At inference their logits may add log(n_c,s / n_c) (the
  # stage's label prior relative to the full one): 'off' (authors), 'on',
  # or 'val' (per stage, whichever of off/on is more accurate on the stage's
  # validation samples).
  c.stage_prior_correction = 'off'
  # Steps between validation checks and log lines (flow and classifiers).
  c.eval_every = 250
  c.eval_chunk = 4096  # Rows per jitted inference call.
  return c


def with_preset(cfg: ml_collections.ConfigDict,
                dataset_name: str = 'default') -> ml_collections.ConfigDict:
  """cfg with its None per-data-set keys filled from DATASET_PRESETS.

  The one fill: config/validate.py calls it on full configs (with
  config.data.name), and run_dlsa on a bare dlsa section (direct callers:
  tests, notebooks).
  """
  row = preset_row(dataset_name)
  for field in PRESET_FIELDS:
    if cfg[field] is None:
      cfg[field] = row[field]
  return cfg
