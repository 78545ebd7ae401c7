"""Shared test settings: fast CPU compilation, a tiny model and data."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests compile many small programs; optimising them costs more than it saves.
# (tests/evaluation/test_evaluate.py turns the optimisations back on.)
jax.config.update("jax_disable_most_optimizations", True)
