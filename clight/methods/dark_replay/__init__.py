"""DER++ (Buzzega et al., NeurIPS 2020): replay with stored logits and labels, reservoir memory."""

from clight.methods.dark_replay.buffer import LogitReservoir
from clight.methods.dark_replay.callback import DERpp, logit_mse

__all__ = ["DERpp", "LogitReservoir", "logit_mse"]
