"""Defaults of every DLSA knob (DESIGN §6)."""

import ml_collections
from ml_collections.config_dict import placeholder


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

  # Routing.
  c.depth = 2
  c.top_fraction = 0.3
  # False: one flow ranks all stages (stage s takes the top fraction of what
  # stages < s left). True: a fresh flow is trained on the remaining training
  # samples at every stage, as the authors' code does (depth times slower).
  c.flow_per_stage = False

  # Flow filter: 2 MADE blocks, each followed by a flow BatchNorm.
  c.num_blocks = 2
  c.hidden_dim = placeholder(int)  # None: D, the feature dimension.
  c.bn_momentum = 0.9  # Running stats: m <- momentum m + (1 - momentum) batch.
  c.bn_eps = 1e-5
  # Prior: K unit-variance Gaussians, centres N(0, center_std^2 I), fixed.
  c.num_clusters = 500
  c.center_std = 0.05

  # Flow training.
  c.flow_lr = 0.2
  c.flow_momentum = 0.0
  c.flow_schedule = 'cosine'  # 'constant' or 'cosine' (decay to 0).
  # Global-norm clip of the flow's gradients; None: no clipping.
  c.flow_grad_clip = ml_collections.FieldReference(1.0, field_type=float)
  c.flow_steps = 1500
  c.flow_batch_size = 256  # Pairs per step (2x samples through the flow).
  c.nll_weight_power = 2.0  # Class weights ∝ (n_max / n_c)^power.
  # The NLL is measured in nats per dimension, so lr and term weights do
  # not need retuning when D changes.
  c.nll_per_dim = True
  c.purity_weight = 1.0
  # 'hinge_ce': relu(log K + purity_margin - H(sg(p_pos), p_neg)), i.e. push
  # the soft cross-entropy of the negative's posterior against the positive's
  # (stop-gradient) posterior above that of a uniform posterior by a margin.
  # 'overlap': -log(1 - sum_k sg(p_pos)_k p_neg_k), the NLL of "different
  # clusters". Minimising the plain cross-entropy would pull the pair into
  # the same cluster, the opposite of purity, hence the sign.
  c.purity_type = 'hinge_ce'
  c.purity_margin = 2.0
  c.balance_weight = 1.0
  c.ema_decay = 0.9  # EMA of batch-mean posteriors (bias-corrected).
  # Checkpoint selection on the validation split: 'purity' = classic purity
  # of the val clustering (sum_k max_c n_kc / N); 'heldout' = accuracy on
  # val of the majority training class of each cluster (not inflated by
  # tiny clusters).
  c.flow_select_metric = 'purity'

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
  # Steps between validation checks and log lines (flow and classifiers).
  c.eval_every = 250
  c.eval_chunk = 4096  # Rows per jitted inference call.
  return c
