"""Adversarial perturbations and fooling images."""

from convscope.adversarial.attacks import PixelModel, SignStep, fgsm, minimal, pgd
from convscope.adversarial.fooling import Fooling, fool
from convscope.adversarial.result import Adversarial

__all__ = ["Adversarial", "Fooling", "PixelModel", "SignStep", "fgsm", "fool", "minimal", "pgd"]
