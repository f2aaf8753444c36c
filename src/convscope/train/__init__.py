"""The training lab: small CNNs trained from scratch on image folders, fine-tuning with frozen
blocks, random-label training, per-epoch checkpoints for filter evolution."""

from convscope.train.data import TensorImages, augment, load_split, load_tensor_images
from convscope.train.finetune import blocks, confusion_matrix, freeze, replace_head
from convscope.train.loop import EpochMetrics, TrainConfig, TrainResult, evaluate, load_weights, train
from convscope.train.models import ResNet9, SmallCNN, build

__all__ = [
    "EpochMetrics",
    "ResNet9",
    "SmallCNN",
    "TensorImages",
    "TrainConfig",
    "TrainResult",
    "augment",
    "blocks",
    "build",
    "confusion_matrix",
    "evaluate",
    "freeze",
    "load_split",
    "load_tensor_images",
    "load_weights",
    "replace_head",
    "train",
]
