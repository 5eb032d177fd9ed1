"""One L2-regularised logistic probe per attention head, all heads fitted at once, and the
Wilson interval used to report their accuracy."""
from __future__ import annotations

import math

import torch


def wilson_interval(hits: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sane at small n and near 0 or 1)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = hits / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class HeadProbes:
    """Logistic regressions on standardised features, fitted by batched Newton steps (each head
    is a separate convex problem of D+1 unknowns: a D x D solve per head converges in a few
    iterations, with no learning rate to tune). `weight`/`bias` are mapped back to RAW head
    outputs, so the engine applies them without the scaler."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias      # [G, D], [G] on raw features

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, G, D] -> [N, G]."""
        return torch.einsum("ngd,gd->ng", features.to(self.weight.dtype), self.weight) + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[G] fraction of examples each head's probe classifies right."""
        predicted = self.logits(features) > 0
        return (predicted == labels.bool().unsqueeze(1)).double().mean(0)

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, l2: float | torch.Tensor,
            iterations: int = 25) -> "HeadProbes":
        """features [N, G, D], labels [N] in {0, 1}; l2 a float or one value per head [G]."""
        x = features.double()
        y = labels.double().unsqueeze(1)                                   # [N, 1]
        n, groups, dim = x.shape
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)                    # [G, D]
        xs = torch.cat([(x - mean) / std, torch.ones(n, groups, 1, dtype=x.dtype)], dim=2)
        l2s = torch.as_tensor(l2, dtype=x.dtype).expand(groups)
        ridge = torch.eye(dim + 1, dtype=x.dtype).expand(groups, -1, -1).clone()
        ridge[:, dim, dim] = 0.0                                           # bias is not shrunk
        ridge = ridge * l2s.view(groups, 1, 1)
        w = torch.zeros(groups, dim + 1, dtype=x.dtype)
        for _ in range(iterations):
            p = torch.sigmoid(torch.einsum("ngd,gd->ng", xs, w))
            grad = torch.einsum("ngd,ng->gd", xs, p - y) / n + torch.einsum("gde,ge->gd", ridge, w)
            curvature = (p * (1 - p)).clamp_min(1e-9)
            # [G, D+1, D+1] as one batched matmul over heads (a 3-operand einsum may build a
            # [N, G, D+1, D+1] intermediate).
            weighted = (xs * curvature.unsqueeze(-1)).permute(1, 2, 0)            # [G, D+1, N]
            hess = torch.bmm(weighted, xs.permute(1, 0, 2)) / n + ridge
            step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
            w = w - step
            if float(step.abs().max()) < 1e-8:        # Newton converged for every head
                break
        raw_w = w[:, :dim] / std
        raw_b = w[:, dim] - (w[:, :dim] * mean / std).sum(-1)
        return cls(raw_w.float(), raw_b.float())


def select_l2(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
              val_y: torch.Tensor, grid: tuple[float, ...]) -> tuple[HeadProbes, torch.Tensor,
                                                                     torch.Tensor]:
    """Fit every head at every L2 strength; keep, per head, the strength with the best
    validation accuracy (ties go to the stronger penalty, listed last in `grid` order)."""
    best_acc = torch.full((train_x.shape[1],), -1.0, dtype=torch.float64)
    best_l2 = torch.zeros(train_x.shape[1], dtype=torch.float64)
    for l2 in sorted(grid):
        acc = HeadProbes.fit(train_x, train_y, l2).accuracy(val_x, val_y)
        better = acc >= best_acc
        best_acc = torch.where(better, acc, best_acc)
        best_l2 = torch.where(better, torch.full_like(best_l2, l2), best_l2)
    return HeadProbes.fit(train_x, train_y, best_l2), best_acc, best_l2
