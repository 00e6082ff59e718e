"""DLSA: flow-filtered, likelihood-routed classifiers on frozen features.

flow (the masked autoregressive flow), flow_training (its losses and
training), routing (who goes where), classifiers (per-stage classifiers),
rows (fixed row counts for the jitted passes) and run (all of it, end to
end).
"""

from lcreg_jax.dlsa.run import DLSAResult, run_dlsa

__all__ = ['DLSAResult', 'run_dlsa']
