"""lcreg_jax.chips: the published figures the roofline and fit use."""

import re

import pytest

from lcreg_jax import chips


def test_each_gpu_description_names_a_chip_with_its_memory():
  # The compiler reports the description's name as the device kind, and
  # the capacity a program is checked against is the table's: they agree.
  for proto in chips.GPU_TARGETS.values():
    name = re.search(r'device_description_str: "([^"]+)"', proto).group(1)
    memory = int(re.search(r'device_memory_size: (\d+)', proto).group(1))
    bandwidth = int(re.search(r'memory_bandwidth: (\d+)', proto).group(1))
    assert chips.chip(name).hbm_bytes == memory
    assert chips.chip(name).hbm_bytes_per_s == bandwidth


def test_tpu_capacities_are_the_published_ones():
  assert chips.chip('TPU v5 lite').hbm_bytes == 16 * chips.GIB
  assert chips.chip('TPU v4').hbm_bytes == 32 * chips.GIB
  for chip in chips.CHIPS.values():
    assert set(chip.peak_flops) == {'float32', 'bfloat16'}


def test_an_unknown_device_kind_is_named():
  with pytest.raises(KeyError, match='TPU v9'):
    chips.chip('TPU v9')
