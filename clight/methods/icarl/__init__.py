"""iCaRL (Rebuffi et al., CVPR 2017): herding exemplars, sigmoid distillation, nearest-mean classifier."""

from clight.methods.icarl.callback import ICaRL, icarl_loss
from clight.methods.icarl.herding import herding_order, nearest_mean_scores, released_code_herding_order

__all__ = ["ICaRL", "herding_order", "icarl_loss", "nearest_mean_scores", "released_code_herding_order"]
