"""Training the expression GAN: ``train(TrainConfig(...))`` is what ``exaug train`` runs."""

from exaug.train.config import TrainConfig
from exaug.train.loop import TrainingInterrupted, train

__all__ = ["TrainConfig", "TrainingInterrupted", "train"]
