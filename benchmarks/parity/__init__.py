"""Parity with the authors' code: MiSLAS's and DLSA's own PyTorch code,
run from checkouts the user points at, against lcreg_jax on the same
long-tailed images and the same stage-1 features (docs/benchmarks.md,
"Parity with the authors' code"; benchmarks/parity/EDITS.md lists every
edit made to the authors' code)."""
