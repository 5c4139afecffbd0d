"""General sample replay (GeRe, Zhang et al. 2025): threshold-margin loss and its alternatives."""

from clight.methods.general_replay.callback import LOSSES, GeneralPerplexity, GeneralReplay
from clight.methods.general_replay.losses import feature_l1, feature_l2, logit_kl, tm_loss, tm_loss_from_masks
from clight.methods.general_replay.packed_states import NEG, NEU, POS, PackedStates, classify, pack, unpack
from clight.methods.general_replay.thresholds import Thresholds, compute_states, compute_thresholds

__all__ = [
    "LOSSES", "NEG", "NEU", "POS", "GeneralPerplexity", "GeneralReplay", "PackedStates", "Thresholds", "classify",
    "compute_states", "compute_thresholds", "feature_l1", "feature_l2", "logit_kl", "pack", "tm_loss",
    "tm_loss_from_masks", "unpack",
]
