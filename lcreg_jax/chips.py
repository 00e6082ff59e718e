"""Published figures of the accelerators `lcreg_jax.aot` compiles for.

Per chip: HBM capacity, HBM bandwidth and peak dense FLOP/s by the dtype of
the model's matmuls. Sources (the makers' pages, read 2026-12):
- TPU v4: https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB,
  1,200 GB/s; two TensorCores per chip);
- TPU v5e: https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB,
  819 GB/s);
- TPU v5p: https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB,
  2,765 GB/s; two TensorCores per chip);
- TPU v6e: https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GiB,
  1,640 GB/s);
- H100 SXM: NVIDIA H100 Tensor Core GPU datasheet (989 TFLOP/s bf16 dense,
  495 TF32 dense, 80 GB HBM3, 3.35 TB/s);
- H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (same compute as H100
  SXM, 141 GB HBM3e, 4.8 TB/s).

float32 peaks are those of the units XLA uses for a float32 matmul at JAX's
default precision: on TPU one bf16 pass of the MXU (so the bf16 peak), on
Hopper TF32. They are upper bounds: a roofline from them is an estimate.
"""

import dataclasses

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # per chip
  hbm_bytes_per_s: float  # per chip
  peak_flops: dict  # dtype name -> dense FLOP/s per chip


CHIPS = {
  'TPU v4': Chip(
    'TPU v4', 32 * GIB, 1.2e12, {'bfloat16': 275e12, 'float32': 275e12}
  ),
  'TPU v5 lite': Chip(
    'TPU v5e', 16 * GIB, 8.19e11, {'bfloat16': 197e12, 'float32': 197e12}
  ),
  'TPU v5': Chip(
    'TPU v5p', 95 * GIB, 2.765e12, {'bfloat16': 459e12, 'float32': 459e12}
  ),
  'TPU v6 lite': Chip(
    'TPU v6e', 32 * GIB, 1.64e12, {'bfloat16': 918e12, 'float32': 918e12}
  ),
  'NVIDIA H100 80GB HBM3': Chip(
    'H100 SXM', 85_045_477_376, 3.35e12, {'bfloat16': 989e12, 'float32': 495e12}
  ),
  'NVIDIA H200': Chip(
    'H200 SXM', 150_754_820_096, 4.8e12, {'bfloat16': 989e12, 'float32': 495e12}
  ),
}


def chip(device_kind: str) -> Chip:
  """The figures of a device kind as JAX names it (`device.device_kind`)."""
  if device_kind not in CHIPS:
    raise KeyError(
      f'no published figures for {device_kind!r} in '
      f'lcreg_jax/chips.py (known: {", ".join(CHIPS)})'
    )
  return CHIPS[device_kind]


# GPU device descriptions for XLA's deviceless GPU compiler
# (`get_topology_desc(platform='cuda', target_config=...)`): text protos of
# xla.GpuTargetConfigProto's `gpu_device_info` (stream_executor
# GpuDeviceInfoProto). The field set follows XLA's own specs in
# openxla/xla xla/tools/hlo_opt/gpu_specs/*.txtpb; the values are the
# chips' published figures: SM count, clock, L2 and memory from CUDA's
# deviceQuery on an H100 SXM (132 SMs at 1.98 GHz, 50 MiB L2, 85,045,477,376
# bytes), the per-SM limits of compute capability 9.0 (CUDA Programming
# Guide, "Compute Capabilities"), bandwidth and H200 memory from the
# datasheets (H200: 143,771 MiB as nvidia-smi reports it). H200 is an H100
# die with more and faster HBM, so only memory and bandwidth differ.
_HOPPER = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
device_description_str: "{name}"
"""

GPU_TARGETS = {
  'h100': _HOPPER.format(
    bandwidth=3_350_000_000_000,
    memory=85_045_477_376,
    name='NVIDIA H100 80GB HBM3',
  ),
  'h200': _HOPPER.format(
    bandwidth=4_800_000_000_000, memory=150_754_820_096, name='NVIDIA H200'
  ),
}
