"""The expression GAN: networks, checkpoint files and the inference API."""

from exaug.model.checkpoint import load_generator, load_state, resolve_checkpoint, save_generator, save_state
from exaug.model.generator import ExpressionGenerator
from exaug.model.networks import Discriminator, ExpressionClassifier, Generator, ModelConfig

__all__ = [
    "Discriminator", "ExpressionClassifier", "ExpressionGenerator", "Generator", "ModelConfig",
    "load_generator", "load_state", "resolve_checkpoint", "save_generator", "save_state",
]
