"""lcreg_jax: LCReg, MiSLAS and DLSA for long-tailed recognition in JAX/Flax.

Entry point: `python -m lcreg_jax.main --config=configs/default.py`.
Subpackages follow the data flow: config → data → models → losses → steps →
loop → evaluate → stages → main (README, "What is where").
"""

__version__ = '0.2.0'
