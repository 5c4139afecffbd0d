"""General sample replay (GeRe, Zhang et al. 2025): threshold-margin loss and its alternatives."""

from clight.methods.general_replay.callback import GeneralReplay
from clight.methods.general_replay.losses import feature_l1, feature_l2, logit_kl, tm_loss, tm_loss_from_masks
from clight.methods.general_replay.packed_states import NEG, NEU, POS, PackedStates, classify, pack, unpack
from clight.methods.general_replay.perplexity import GeneralPerplexity
from clight.methods.general_replay.reference import BaseReference
from clight.methods.general_replay.thresholds import Thresholds, compute_states, compute_thresholds
from clight.methods.general_replay.variants import ReplayLoss, ReplayLossName, make_replay_loss

__all__ = [
    "NEG",
    "NEU",
    "POS",
    "BaseReference",
    "GeneralPerplexity",
    "GeneralReplay",
    "PackedStates",
    "ReplayLoss",
    "ReplayLossName",
    "Thresholds",
    "classify",
    "compute_states",
    "compute_thresholds",
    "feature_l1",
    "feature_l2",
    "logit_kl",
    "make_replay_loss",
    "pack",
    "tm_loss",
    "tm_loss_from_masks",
    "unpack",
]
