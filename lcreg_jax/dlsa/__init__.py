"""DLSA: flow-filtered, likelihood-routed classifiers on frozen features."""

from lcreg_jax.dlsa.train import DLSAResult, run_dlsa

__all__ = ['DLSAResult', 'run_dlsa']
