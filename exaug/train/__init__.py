"""Training the expression GAN on aligned faces: ``train(TrainConfig(...))``. ``exaug train`` runs
:func:`exaug.pipelines.training.train_model`, which aligns a raw photo folder first."""

from exaug.train.config import TrainConfig
from exaug.train.loop import TrainingInterrupted, train

__all__ = ["TrainConfig", "TrainingInterrupted", "train"]
