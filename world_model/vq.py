"""Vector quantizer with the parameter layout and loss of diffusers' ``VectorQuantizer(legacy=False)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Distances are computed in row chunks so that a (rows x codebook) matrix never exceeds this many floats
# (8192 codes x 2048 rows = 64 MiB), whatever the batch size.
_MAX_DISTANCE_ELEMENTS = 1 << 24


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook (Euclidean distance) with a straight-through estimator.

    ``embedding.weight`` ``(num_codes, dim)`` is the codebook (the published key name). ``forward`` (the
    training path) keeps the codes it picked and the latents it quantized, detached, in ``last_indices`` and
    ``last_latents`` for ``world_model.codebook.CodebookMonitor`` (which clears them); they are not state.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.last_indices: torch.Tensor | None = None
        self.last_latents: torch.Tensor | None = None

    @property
    def num_codes(self) -> int:
        return self.embedding.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every vector of ``z`` ``(..., dim)`` -> ``(...)`` int64."""
        # Always float32 (also under autocast): half-precision distances would pick different codes.
        flat = z.reshape(-1, self.dim).float()
        codebook = self.embedding.weight.float()
        rows = max(1, _MAX_DISTANCE_ELEMENTS // self.num_codes)
        with torch.autocast(flat.device.type, enabled=False):
            # torch.cdist + argmin, as the official quantizer does, so that near-ties resolve the same way.
            indices = [torch.cdist(part, codebook).argmin(dim=1) for part in flat.split(rows)]
        return torch.cat(indices).view(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for integer ``indices`` ``(...)`` -> ``(..., dim)``."""
        return F.embedding(indices, self.embedding.weight)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize channel-last latents ``z`` ``(..., dim)``.

        Returns:
            quantized ``(..., dim)`` with straight-through gradients to ``z``, the commitment loss
            ``beta * mean((sg[zq] - z)^2) + mean((zq - sg[z])^2)`` (diffusers' non-legacy form), and
            the code indices ``(...)``.
        """
        indices = self.nearest(z)
        z_q = self.lookup(indices)
        loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())
        self.last_indices, self.last_latents = indices, z.detach()
        return z + (z_q - z).detach(), loss, indices
