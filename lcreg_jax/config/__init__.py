"""Config: every key declared once (base, dlsa, via schema), published
tables (presets), and the one check that runs before any work (validate:
the keys' own checks, the rules across keys, then resolve)."""

from lcreg_jax.config.base import base_config
from lcreg_jax.config.validate import resolve_and_validate
from lcreg_jax.config.validate import validate_against_data

__all__ = ['base_config', 'resolve_and_validate', 'validate_against_data']
