"""The estimator written directly from its definition, and clustered test features: the independent
computations the estimator tests compare against."""

import torch


def dense_bayes_error(z: torch.Tensor, y: torch.Tensor, num_classes: int, sigma: float) -> torch.Tensor:
    """The estimator written directly from its definition (N × N matrices, autograd-friendly)."""
    diff = z.unsqueeze(1) - z.unsqueeze(0)
    kernel = torch.exp(-(diff**2).sum(-1) / (2 * sigma**2))
    kernel = kernel * (1 - torch.eye(len(z), dtype=z.dtype))
    row_sum = kernel.sum(1) + 1e-8
    posterior = kernel @ torch.nn.functional.one_hot(y, num_classes).to(z.dtype) / row_sum.unsqueeze(1)
    predicted = posterior.detach().argmax(1)  # held fixed, as the method specifies
    return (1 - posterior.gather(1, predicted.unsqueeze(1)).squeeze(1)).mean()


def clustered_features(n: int, d: int, classes: int, seed: int, dtype=torch.float64, spread=0.25):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g, dtype=dtype) * 0.3
    z = centres[y] + spread * torch.randn(n, d, generator=g, dtype=dtype)
    return z, y
