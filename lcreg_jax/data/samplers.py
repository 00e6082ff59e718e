"""Which training samples each step reads: shuffled epochs or MiSLAS's
class-balanced order (docs/method.md §4).

Every order is a pure function of (seed, epoch), so the batch of global step t
does not depend on where a run started: a killed run resumed at step t reads
exactly what an uninterrupted one would.
"""

import numpy as np

SAMPLERS = ("shuffle", "class_balanced")


def epoch_samples(class_counts, sampler: str) -> int:
  """Samples in one epoch of the input pipeline's order (its draws are keyed
  by (seed, epoch)): the training set when shuffling; for the class-balanced
  order, the length of MiSLAS's ClassAwareSampler, the largest class times
  the classes present (4.03x the training set on Fashion-MNIST-LT at IF
  100). A training schedule's class-balanced epoch is shorter:
  `class_balanced_steps_per_epoch`."""
  counts = np.asarray(class_counts)
  if sampler == "class_balanced":
    return int(counts.max() * np.count_nonzero(counts))
  return int(counts.sum())


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped), at least 1."""
  return max(1, num_examples // global_batch_size)


def class_balanced_steps_per_epoch(
  class_counts, batch_size: int, epoch_length: str, method: str
) -> int:
  """Steps in one epoch of class-balanced batches (`stage2.epoch_length`).

  'train_set': about the training set's N samples, counted as the authors'
  loops count it. MiSLAS's stage-2 `train()` stops after the batch with
  index ceil(N/B), so ceil(N/B) + 1 batches; classifier-balancing (cRT,
  LWS) stops at step floor(N/B). 'sampler': the whole ClassAwareSampler,
  max_c n_c x C samples in full batches.
  """
  n = int(np.sum(class_counts))
  if epoch_length == "sampler":
    return steps_per_epoch(
      epoch_samples(class_counts, "class_balanced"), batch_size
    )
  if method == "mislas":
    return -(-n // batch_size) + 1
  return steps_per_epoch(n, batch_size)


def class_balanced_order(
  labels, num_samples: int, samples_per_class: int, rng: np.random.Generator
) -> np.ndarray:
  """MiSLAS class-aware sampling order (docs/method.md §4) of `num_samples` indices into `labels`.

  Classes are visited in a random order that is redrawn each time every class has been
  visited once; each visit takes `samples_per_class` consecutive items from that class's own
  random cycle, which is redrawn when exhausted. Classes absent from `labels` are skipped.
  Draw order on `rng`: one permutation per class (ascending class), then the class cycle.
  """
  labels = np.asarray(labels)
  if samples_per_class < 1 or num_samples < 0 or labels.size == 0:
    raise ValueError(
      f"need samples_per_class >= 1, num_samples >= 0 and some labels; got "
      f"{samples_per_class}, {num_samples}, {labels.size} labels."
    )
  members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  cycles = [rng.permutation(m) for m in members]
  pos = [0] * len(members)
  class_cycle, cpos = rng.permutation(len(members)), 0
  out = np.empty(num_samples, np.int64)
  n = 0
  while n < num_samples:
    if cpos == len(members):
      class_cycle, cpos = rng.permutation(len(members)), 0
    k = class_cycle[cpos]
    cpos += 1
    need = min(samples_per_class, num_samples - n)
    while need:
      if pos[k] == len(cycles[k]):
        cycles[k], pos[k] = rng.permutation(members[k]), 0
      t = min(need, len(cycles[k]) - pos[k])
      out[n : n + t] = cycles[k][pos[k] : pos[k] + t]
      pos[k] += t
      n += t
      need -= t
  return out


def epoch_order(
  labels,
  epoch: int,
  *,
  seed: int,
  sampler: str,
  samples_per_class: int,
  length: int,
) -> np.ndarray:
  """The global sample order of one epoch: `length` (= steps per epoch × batch) indices."""
  if sampler not in SAMPLERS:
    raise ValueError(
      f"unknown sampler {sampler!r}; use 'shuffle' or 'class_balanced'."
    )
  rng = np.random.default_rng([seed, epoch])
  n = len(labels)
  if sampler == "shuffle":
    # np.resize repeats the permutation when the data set is smaller than one batch.
    return np.resize(rng.permutation(n), length)
  return class_balanced_order(labels, max(n, length), samples_per_class, rng)[
    :length
  ]
