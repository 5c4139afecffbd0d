from clight.models.backbones import MLP, SmallCNN, TimmBackbone
from clight.models.classifier import ContinualClassifier
from clight.models.clip import ContinualCLIP
from clight.models.module import ContinualModule, NonFiniteLossError
from clight.models.weights import KEY_MAPS, load_local_weights, read_state_dict, remap_keys

__all__ = [
    "KEY_MAPS",
    "MLP",
    "ContinualCLIP",
    "ContinualClassifier",
    "ContinualModule",
    "NonFiniteLossError",
    "SmallCNN",
    "TimmBackbone",
    "load_local_weights",
    "read_state_dict",
    "remap_keys",
]
