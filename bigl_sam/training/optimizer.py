"""The optimizer of every training command, and the parameters it must not move."""

import torch


def adamw(module: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters of `module` that require gradients; no weight decay on biases, norms and
    layer scales (the 1-D parameters). The learning rate is set at every step from the schedule."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))


def freeze_router_biases(encoder: torch.nn.Module) -> None:
    """A big.LITTLE encoder's router biases stay fixed: a softmax over tokens ignores a shift shared by all of
    them, so their gradient is rounding noise that Adam would blow up into a random walk."""
    for block in encoder.blocks:
        block.router.bias.requires_grad_(False)


def router_grad_norm(encoder: torch.nn.Module) -> torch.Tensor:
    """L2 norm of the routers' weight gradients (before clipping): is the router learning at all?"""
    routers = [block.router for block in encoder.blocks if hasattr(block, "router")]
    grads = [router.weight.grad for router in routers if router.weight.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.stack([g.detach().float().norm() for g in grads]).norm()
