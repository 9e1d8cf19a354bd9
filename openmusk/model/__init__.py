"""The MUSK multiway transformer: configuration, modules, checkpoints and weight sources."""
from .checkpoint import (CheckpointMismatchError, CheckpointReport, check_checkpoint, config_from_checkpoint,
                         load_checkpoint, save_checkpoint)
from .config import CONFIGS, MuskConfig, get_config, list_configs
from .factory import create_model
from .hub import DEFAULT_WEIGHTS, WeightsNotFoundError, resolve_weights, weights_available
from .musk import Musk

__all__ = ["CheckpointMismatchError", "CheckpointReport", "check_checkpoint", "config_from_checkpoint",
           "load_checkpoint", "save_checkpoint",
           "CONFIGS", "MuskConfig", "get_config", "list_configs", "create_model", "DEFAULT_WEIGHTS",
           "WeightsNotFoundError", "resolve_weights", "weights_available", "Musk"]
