"""DDAS: the distribution-discriminative auto-selector that picks, per sample, the task whose
experts should process it, or none of them.

After each task an autoencoder is fitted to the frozen model's features of that task's training
data and a reconstruction-error threshold is recorded. At test time a sample goes to the task
whose autoencoder reconstructs it best; if even that error is above the task's threshold, the
sample goes to the pretrained model (route -1). Errors are the mean squared error over feature
dimensions, in one feature space shared by all tasks (``transform``), so they compare.
"""

from __future__ import annotations

import math
from typing import Literal, Union, cast

import torch
from torch import nn
from torch.nn import functional as F

from clight.choices import check_choice
from clight.methods.moe_adapters.experts import init_linear_
from clight.models.sharding import keep_whole

FeatureTransform = Literal["standardize", "sigmoid", "none"]
Threshold = Union[float, Literal["auto"]]


def order_statistic_threshold(errors: torch.Tensor, quantile: float) -> tuple[float, float]:
    """``(the k-th smallest of the n errors, (n + 1 - k) / (n + 1))``, ``k = min(n, ceil(quantile (n + 1)))``:
    the threshold, and the probability that a new error from the same distribution exceeds it."""
    n = len(errors)
    k = min(n, max(1, math.ceil(quantile * (n + 1) - 1e-9)))
    return float(errors.double().sort().values[k - 1]), (n + 1 - k) / (n + 1)


class Autoencoder(nn.Module):
    """``decoder(relu(encoder(z)))`` (the released code's; a sigmoid output for sigmoid features)."""

    def __init__(self, dim: int, code_dims: int = 100, sigmoid_output: bool = False) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(dim, code_dims), nn.Linear(code_dims, dim)
        self.sigmoid_output = sigmoid_output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(F.relu(self.encoder(z)))
        return torch.sigmoid(out) if self.sigmoid_output else out

    def errors(self, z: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction error ``[N]``: the mean squared error over dimensions."""
        return (self(z) - z).pow(2).mean(1)

    def reset_(self, generator: torch.Generator) -> None:
        """Fresh ``nn.Linear`` initialisation drawn from ``generator`` (on the CPU, then copied)."""
        for layer in (self.encoder, self.decoder):
            fresh = nn.Linear(layer.in_features, layer.out_features)
            init_linear_(fresh, generator)
            with torch.no_grad():
                layer.weight.copy_(fresh.weight)
                layer.bias.copy_(fresh.bias)


class DDAS(nn.Module):
    """One autoencoder per task (all created up front, so checkpoints load into a fresh model),
    the per-task thresholds and the feature statistics.

    ``transform``: ``standardize`` (clight's default: minus the first task's per-dimension mean,
    divided by its overall standard deviation, one number, so no near-constant dimension is blown
    up; then fixed, so every task's errors live in one space),
    ``sigmoid`` (the released code's, on its non-negative CNN features) or ``none``.
    ``threshold``: ``"auto"`` or one number for every task (the paper's single hyper-parameter).
    ``auto`` holds the ``calibration_fraction`` of the task's samples out of the autoencoder's fit
    (their errors are those of samples it has not seen, as test samples will be; the training
    samples' own when the fraction is 0) and takes the k-th smallest of their n errors,
    ``k = min(n, ceil(threshold_quantile x (n + 1)))``. A new sample of the task's distribution
    is then rejected (sent to the pretrained model) with probability ``(n + 1 - k) / (n + 1)``
    (order statistics of exchangeable errors), recorded per task as ``expected_rejection``: with
    the defaults (0.99, a quarter of the samples) 1/(n + 1) up to n = 99, then about 1%.
    """

    # buffers
    fitted: torch.Tensor
    thresholds: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    stats_ready: torch.Tensor

    def __init__(
        self,
        num_tasks: int,
        dim: int,
        code_dims: int = 100,
        transform: FeatureTransform = "standardize",
        threshold: Threshold = "auto",
        threshold_quantile: float = 0.99,
        calibration_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        keep_whole(self)  # fitted by the method between fits: whole on every rank when the model is sharded
        check_choice("DDAS.transform", transform, FeatureTransform)
        if not (threshold == "auto" or (isinstance(threshold, (int, float)) and threshold > 0)):
            raise ValueError(f"DDAS.threshold must be 'auto' or a positive number, got {threshold!r}")
        if not 0.0 < threshold_quantile <= 1.0:
            raise ValueError(f"DDAS.threshold_quantile must be in (0, 1], got {threshold_quantile}")
        if not 0.0 <= calibration_fraction < 1.0:
            raise ValueError(f"DDAS.calibration_fraction must be in [0, 1), got {calibration_fraction}")
        self.transform, self.threshold, self.threshold_quantile = transform, threshold, threshold_quantile
        self.calibration_fraction = calibration_fraction
        self.autoencoders = nn.ModuleList(Autoencoder(dim, code_dims, transform == "sigmoid") for _ in range(num_tasks))
        self.autoencoders.requires_grad_(False)
        self.register_buffer("fitted", torch.zeros(num_tasks, dtype=torch.bool))
        self.register_buffer("thresholds", torch.full((num_tasks,), math.inf))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    def autoencoder(self, task: int) -> Autoencoder:
        return cast(Autoencoder, self.autoencoders[task])

    @property
    def any_fitted(self) -> bool:
        return bool(self.fitted.any())

    def features_to_space(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float()
        if self.transform == "standardize":
            return (f - self.mean) / self.scale
        return torch.sigmoid(f) if self.transform == "sigmoid" else f

    @torch.no_grad()
    def errors(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, T]`` reconstruction errors (``inf`` for tasks not fitted yet)."""
        with torch.autocast(features.device.type, enabled=False):
            z = self.features_to_space(features)
            out = torch.full((len(z), len(self.autoencoders)), math.inf, device=z.device)
            for t in self.fitted.nonzero().flatten().tolist():
                out[:, t] = self.autoencoder(t).errors(z)
        return out

    @torch.no_grad()
    def route(self, features: torch.Tensor) -> torch.Tensor:
        """Per-sample task index ``[N]``: the best-reconstructing task, or -1 when its error is
        above that task's threshold (or not finite), and for every sample while no task is fitted."""
        if not self.any_fitted:
            return torch.full((len(features),), -1, dtype=torch.long, device=features.device)
        best_error, best = self.errors(features).min(1)
        accept = best_error <= self.thresholds[best]  # False for NaN
        return torch.where(accept, best, torch.full_like(best, -1))

    def fit(
        self,
        task: int,
        features: torch.Tensor,
        generator: torch.Generator,
        steps: int = 300,
        batch_size: int = 64,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        decay_every: int = 10,
    ) -> dict:
        """Fit task ``task``'s autoencoder on ``features`` ``[N, d]`` (Adam; the learning rate times
        0.1 every ``decay_every`` passes over the data, as the released code) and set its threshold."""
        if len(features) == 0:
            raise ValueError(f"DDAS got no features for task {task}: its training set is empty")
        if not torch.isfinite(features).all():
            raise FloatingPointError(f"the frozen model's features of task {task} hold NaN or inf: check the inputs")
        shuffled = features.float()[torch.randperm(len(features), generator=generator).to(features.device)]
        held = int(len(shuffled) * self.calibration_fraction)
        calibration, features = shuffled[:held], shuffled[held:]
        if self.transform == "standardize" and not bool(self.stats_ready):
            self.mean.copy_(features.mean(0))
            spread = (features - self.mean).pow(2).mean().sqrt()  # a task of near-identical samples: 1e-3 of their size
            self.scale.copy_(torch.maximum(spread, 1e-3 * features.pow(2).mean().sqrt()).clamp_min(1e-12))
            self.stats_ready.fill_(True)
        z = self.features_to_space(features)
        ae = self.autoencoder(task)
        ae.reset_(generator)
        ae.requires_grad_(True)
        optimizer = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=weight_decay)
        per_epoch = max(1, math.ceil(len(z) / batch_size))
        order = torch.empty(0, dtype=torch.long)
        with torch.enable_grad(), torch.autocast(z.device.type, enabled=False):
            for step in range(steps):
                if step % per_epoch == 0:
                    order = torch.randperm(len(z), generator=generator).to(z.device)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * 0.1 ** ((step // per_epoch) // decay_every)
                rows = order[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]
                loss = F.mse_loss(ae(z[rows]), z[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        ae.requires_grad_(False)
        with torch.no_grad():
            train_errors = ae.errors(z)
            errors = ae.errors(self.features_to_space(calibration)) if held else train_errors
        if self.threshold == "auto":
            value, expected_rejection = order_statistic_threshold(errors, self.threshold_quantile)
        else:
            value, expected_rejection = float(self.threshold), None
        self.thresholds[task] = value
        self.fitted[task] = True
        return {
            "threshold": value,
            "train_error_median": float(train_errors.median()),
            "calibration_error_median": float(errors.median()),
            "samples": len(z),
            "calibration_samples": held,
            # of the task's own samples, for an auto threshold on held-out errors (training errors are biased low)
            "expected_rejection": expected_rejection if held else None,
        }

    def describe(self) -> dict:
        return {
            "feature_transform": self.transform
            + (
                " (clight; first task's statistics)"
                if self.transform == "standardize"
                else " (released code)"
                if self.transform == "sigmoid"
                else ""
            ),
            "threshold": f"per task: the k-th smallest of the reconstruction errors of the n samples held out from the fit "
            f"({self.calibration_fraction:.0%} of its samples), k = min(n, ceil({self.threshold_quantile} (n + 1))); "
            "expected rejection of the task's own samples (n + 1 - k) / (n + 1) (clight)"
            if self.threshold == "auto"
            else f"{self.threshold} for every task (paper: one hyper-parameter)",
            "code_dims": self.autoencoder(0).encoder.out_features,
        }
