"""Hugging Face write-back: a pruned transformers model's config follows its new widths."""
from .config import sync_config

__all__ = ["sync_config"]
