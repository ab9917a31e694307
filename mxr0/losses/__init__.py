"""Self-supervised and contrastive losses, one small module per loss (the task glues them)."""

from mxr0.losses.dino import DINOLoss, sinkhorn_knopp
from mxr0.losses.ibot import IBOTPatchLoss
from mxr0.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
