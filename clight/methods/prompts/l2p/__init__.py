from clight.methods.prompts.l2p.model import L2P, L2PPool

__all__ = ["L2P", "L2PPool"]
