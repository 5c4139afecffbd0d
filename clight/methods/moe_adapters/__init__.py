"""MoE adapters with a distribution-discriminative auto-selector (Yu et al., CVPR 2024)."""

from clight.methods.moe_adapters.callback import MoEAdapters
from clight.methods.moe_adapters.ddas import DDAS, Autoencoder
from clight.methods.moe_adapters.experts import BottleneckAdapter, cv_squared, top_k_gates
from clight.methods.moe_adapters.injection import inject, moe_blocks
from clight.methods.moe_adapters.layer import MoEBlock, MoELayer, RouteState
from clight.methods.moe_adapters.routing import NetworkRouting, install_routing, network_routing
from clight.methods.moe_adapters.targets import CausalLMTarget, Target, ViTTarget, resolve_target, transformer_blocks

__all__ = [
    "Autoencoder",
    "BottleneckAdapter",
    "CausalLMTarget",
    "DDAS",
    "MoEAdapters",
    "MoEBlock",
    "MoELayer",
    "NetworkRouting",
    "RouteState",
    "Target",
    "ViTTarget",
    "cv_squared",
    "inject",
    "install_routing",
    "moe_blocks",
    "network_routing",
    "resolve_target",
    "top_k_gates",
    "transformer_blocks",
]
