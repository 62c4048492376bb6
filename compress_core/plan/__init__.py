"""The per-layer plan: what to do to each layer (``LayerConfig``, ``PruneConfig``) and the recipe
that maps layer names and RE2 patterns to it (``Plan``, saved as YAML or JSON)."""

from compress_core.plan.layer_config import LayerConfig, PruneConfig
from compress_core.plan.recipe import Plan

__all__ = ["LayerConfig", "Plan", "PruneConfig"]
