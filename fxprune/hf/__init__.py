"""Hugging Face write-back: a pruned transformers model keeps its class, its config follows its new
widths, and :func:`save_pretrained` / :func:`from_pretrained` carry what a config cannot say;
:func:`prune_checkpoint` prunes a sharded safetensors checkpoint tensor by tensor without loading it."""
from .checkpoint import from_pretrained, save_pretrained
from .config import config_mismatches, sync_config
from .stream import CheckpointScores, checkpoint_scores, meta_model, plan_from_scores, prune_checkpoint

__all__ = ["sync_config", "config_mismatches", "save_pretrained", "from_pretrained", "prune_checkpoint",
           "checkpoint_scores", "CheckpointScores", "plan_from_scores", "meta_model"]
