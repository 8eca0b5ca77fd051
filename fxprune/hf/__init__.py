"""Hugging Face write-back: a pruned transformers model keeps its class, its config follows its new
widths, and :func:`save_pretrained` / :func:`from_pretrained` carry what a config cannot say."""
from .checkpoint import from_pretrained, save_pretrained
from .config import config_mismatches, sync_config

__all__ = ["sync_config", "config_mismatches", "save_pretrained", "from_pretrained"]
