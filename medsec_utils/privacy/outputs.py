"""What an output-observing attacker reads from a model: its logits. A module of its own so that the steps which
store models' logits depend on this code alone, not on the attacks that read them."""

from __future__ import annotations

import torch


@torch.no_grad()
def model_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """``model``'s logits on images ``x`` in [0, 1] (eval mode, float32 on the CPU)."""
    model.to(device).eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
