"""The GPU run's step (issue 26): compiled and channels-last, it computes the eager step's loss and gradients."""

import copy

import torch

from m2m.model import M2MModel
from train.training.m2m import parse_args, speed_up


def loss_and_grads(model: M2MModel, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(*batch).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_compiled_step_equals_the_eager_step(pipe):
    """torch.compile (here the aot_eager backend: the same graph capture and autograd, no code generation) and
    channels-last change how the step runs, not what it computes; the module keeps its parameters' names."""
    g = torch.Generator().manual_seed(0)
    size, res = pipe.unet.config.sample_size, pipe.resolution
    batch = (torch.randn(2, 3, 4, size, size, generator=g), torch.rand(2, 3, 3, res, res, generator=g) * 2 - 1,
             torch.randint(0, 1000, (6,), generator=g), torch.randn(6, 4, size, size, generator=g),
             torch.tensor([[True, True, True], [True, False, True]]))  # fmt: skip
    eager = M2MModel(*copy.deepcopy((pipe.unet, pipe.isa)), pipe.scheduler, pipe.image_encoder).train()
    fast = M2MModel(*copy.deepcopy((pipe.unet, pipe.isa)), pipe.scheduler, pipe.image_encoder).train()
    speed_up(fast, parse_args(["--compile", "--channels-last", "--compile-backend", "aot_eager"]))
    (loss, grads), (fast_loss, fast_grads) = loss_and_grads(eager, batch), loss_and_grads(fast, batch)
    assert fast_grads.keys() == grads.keys() and len(grads) > 100
    assert torch.allclose(fast_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(fast_grads[name], grad, rtol=1e-4, atol=1e-6), name
