"""The Bayesian fit behind every reward scope: Bradley-Terry pairs and logistic thumbs under a Gaussian prior.

Newton's method for the MAP weights, the Laplace approximation for their covariance (the reward's
uncertainty) and for the labels' evidence, by which ``learning.reward`` lets each scope's labels choose
their text block's prior (MacKay 1992). Hand-checked in tests/learning/test_reward.py.
"""

from __future__ import annotations

import torch

__all__ = ["fit_preferences", "fit_preferences_with_evidence"]


def _design(pairs: tuple[torch.Tensor, torch.Tensor] | None, thumbs: tuple[torch.Tensor, torch.Tensor] | None, dim: int,
            thumbs_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X (N, dim), targets (N,), weights (N,)) in float64: a pair's row is z_c - z_r with no bias; a thumb's z and 1."""
    rows, targets, weights = [], [], []
    if pairs is not None and len(pairs[0]):
        d = (pairs[0] - pairs[1]).double()
        rows.append(torch.cat([d, torch.zeros(len(d), 1, dtype=d.dtype)], 1))
        targets.append(torch.ones(len(d), dtype=d.dtype))
        weights.append(torch.ones(len(d), dtype=d.dtype))
    if thumbs is not None and len(thumbs[0]):
        z = thumbs[0].double()
        rows.append(torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1))
        targets.append(thumbs[1].double())
        weights.append(torch.full((len(z),), float(thumbs_weight), dtype=z.dtype))
    X = torch.cat(rows) if rows else torch.zeros((0, dim), dtype=torch.float64)
    y = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.float64)
    s = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return X, y, s


def fit_preferences(pairs: tuple[torch.Tensor, torch.Tensor] | None, thumbs: tuple[torch.Tensor, torch.Tensor] | None,
                    prior_mean: torch.Tensor, prior_precision: torch.Tensor, *, thumbs_weight: float = 1.0,
                    iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP weights and Laplace covariance of a Bradley-Terry + logistic model with a Gaussian prior.

    ``theta = [w (D,), b]``. Pairs (z_chosen, z_rejected), each (N, D): P(chosen wins) =
    sigmoid(w . (z_c - z_r)). Thumbs (z (M, D), labels (M,)): P(up) = sigmoid(w . z + b), each
    weighted ``thumbs_weight``. Prior N(prior_mean, diag(1 / prior_precision)) over theta (D + 1,).
    Newton's method with backtracking on the log-posterior (concave, so it converges to the one optimum); returns
    (theta (D + 1,), the inverse Hessian (D + 1, D + 1)). Hand-checked in tests/learning/test_reward.py.
    """
    theta, cov, _ = fit_preferences_with_evidence(pairs, thumbs, prior_mean, prior_precision, thumbs_weight=thumbs_weight,
                                                  iterations=iterations)
    return theta, cov


def fit_preferences_with_evidence(pairs: tuple[torch.Tensor, torch.Tensor] | None,
                                  thumbs: tuple[torch.Tensor, torch.Tensor] | None, prior_mean: torch.Tensor,
                                  prior_precision: torch.Tensor, *, thumbs_weight: float = 1.0,
                                  iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``fit_preferences`` and the Laplace approximation of the log marginal likelihood of the labels
    under the prior (MacKay 1992): log p(labels | theta*) + log N(theta*; prior) + (D + 1)/2 log 2 pi
    - 1/2 log det H, i.e. -(the negative log-posterior at theta*) + 1/2 sum log prior_precision
    - 1/2 log det H. Priors compare by it: the one the labels support most is the highest."""
    m, prec = prior_mean.double(), prior_precision.double()
    X, y, s = _design(pairs, thumbs, m.shape[0], thumbs_weight)

    def objective(t: torch.Tensor) -> torch.Tensor:  # the negative log-posterior
        logits = X @ t
        nll = s * (torch.nn.functional.softplus(logits) - y * logits)  # -[y log p + (1 - y) log(1 - p)]
        return nll.sum() + 0.5 * (prec * (t - m) ** 2).sum()

    theta = m.clone()
    value = objective(theta)
    for _ in range(iterations):
        p = torch.sigmoid(X @ theta)  # (N,)
        grad = X.T @ (s * (p - y)) + prec * (theta - m)  # (D + 1,)
        hessian = X.T @ (X * (s * p * (1 - p)).unsqueeze(1)) + torch.diag(prec)  # (D + 1, D + 1)
        step = torch.linalg.solve(hessian, grad)
        scale = 1.0
        while scale > 1e-4:  # backtracking: a full Newton step can overshoot on (nearly) separable labels
            candidate = theta - scale * step
            new_value = objective(candidate)
            if new_value <= value:
                break
            scale /= 2
        else:
            break
        theta, improvement, value = candidate, float(value - new_value), new_value
        if float((scale * step).abs().max()) < 1e-8 or improvement < 1e-12:
            break
    p = torch.sigmoid(X @ theta)
    hessian = X.T @ (X * (s * p * (1 - p)).unsqueeze(1)) + torch.diag(prec)
    evidence = -float(objective(theta)) + 0.5 * float(torch.log(prec).sum()) - 0.5 * float(torch.linalg.slogdet(hessian)[1])
    return theta.float(), torch.linalg.inv(hessian).float(), evidence
