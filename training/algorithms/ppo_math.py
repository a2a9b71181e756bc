"""PPO's math as pure tensor functions, each tested against a hand computation (tests/test_ppo.py): masked statistics,
generalized advantage estimation, the clipped policy and value losses, the adaptive KL coefficient, log-probs at the
sampling temperature. `training/algorithms/ppo.py` runs them."""

from __future__ import annotations


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    """Unbiased variance of the entries where mask is 1."""
    mean = masked_mean(x, mask)
    count = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (count - 1).clamp(min=1)


def whiten(x, mask, eps: float = 1e-8):
    """Zero mean, unit variance over the masked entries; 0 elsewhere."""
    return (x - masked_mean(x, mask)) * (masked_var(x, mask) + eps).rsqrt() * mask


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens: (advantages, returns), both (batch, tokens).

    Past each response's last real token, rewards and values count as 0, so the last token bootstraps from 0.
    """
    import torch

    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate loss: (loss, clip fraction, approximate KL old -> new)."""
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # Schulman's k3 estimator: unbiased and >= 0
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss: (loss, clip fraction)."""
    import torch

    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac.detach()


class KLController:
    """beta of the KL penalty; with a target it adapts (Ziegler et al. 2019), without one it stays fixed."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_responses: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_responses / self.horizon


def logprobs_at_temperature(logits, tokens, temperature: float):
    """log softmax(logits / T) at `tokens`, in float32, and the entropy of that distribution per position."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


def explained_variance(values, returns, mask) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 predicts the mean."""
    var_returns = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var_returns) if var_returns > 0 else float("nan")
