"""The privacy defenses (edgesplit.privacy.defenses): each as its paper defines it, each changes what
it should and only that, the same in every backend, and a resumed run draws the same noise."""
import copy
import functools
from typing import Any, Callable, Dict, List, Tuple
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from edgesplit.backends import Backend
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.meter import CommMeter
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.privacy.dcor import distance_correlation
from edgesplit.privacy.defenses import gaussian_noise, max_norm
from edgesplit.validate import validate
from tests.conftest import TEST_MODEL, TINY
from tests.dist_helpers import data, train_backend
from tests.dist_helpers import config as dist_config
from tests.test_backends import backend_and_batch, train_losses

ALL_ON = ["privacy.nopeek_weight=0.5", "privacy.grad_noise=0.5", "privacy.max_norm=true"]


def _grads(rows: int = 6, features: int = 40) -> torch.Tensor:
    """A micro-batch of gradients whose rows have different norms."""
    g = torch.randn(rows, 2, features // 2, generator=torch.Generator().manual_seed(0))
    return g * torch.linspace(3.0, 0.5, rows).view(-1, 1, 1)


def test_max_norm_scales_each_gradient_along_itself_to_the_largest_expected_norm() -> None:
    g = _grads()
    out = max_norm(g, torch.Generator().manual_seed(7))
    norm2 = g.flatten(1).pow(2).sum(1)
    # Li et al.: g_j (1 + sigma_j xi_j), sigma_j = sqrt(max |g|^2 / |g_j|^2 - 1), xi_j ~ N(0, 1) a sample
    sigma = (norm2.max() / norm2 - 1).sqrt()
    xi = torch.randn(len(g), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, g * (1 + sigma * xi).view(-1, 1, 1), rtol=1e-6, atol=0)
    largest = int(norm2.argmax())
    assert torch.equal(out[largest], g[largest])  # the largest is left as it is
    # so every sample's expected squared norm, |g_j|^2 (1 + sigma_j^2), is the micro-batch's largest
    torch.testing.assert_close(norm2 * (1 + sigma ** 2), norm2.max().expand(len(g)))
    assert torch.equal(max_norm(torch.zeros(3, 4), torch.Generator()), torch.zeros(3, 4))


def test_gradient_noise_has_one_std_for_the_micro_batch_scaled_to_its_norm() -> None:
    g = _grads(rows=16, features=400)
    out = gaussian_noise(g, 0.5, torch.Generator().manual_seed(3))
    noise = torch.randn(g.shape, generator=torch.Generator().manual_seed(3))
    std = 0.5 * torch.linalg.vector_norm(g) / g.numel() ** 0.5
    torch.testing.assert_close(out, g + std * noise, rtol=1e-6, atol=1e-7)
    assert float(torch.linalg.vector_norm(out - g)) == pytest.approx(0.5 * float(torch.linalg.vector_norm(g)),
                                                                     rel=0.05)


def test_distance_correlation_on_known_cases() -> None:
    x = torch.randn(64, 3, 4, generator=torch.Generator().manual_seed(0))
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(distance_correlation(x, 2 * x.flatten(1) + 1)) == pytest.approx(1.0, abs=1e-5)
    far = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    other = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    assert float(distance_correlation(far, other)) < 0.1  # independent: near 0 as n grows
    # a constant batch (a blank input, a dead front): 0, and a zero gradient, not NaN
    for x_, z in ((x, torch.zeros(64, 5)), (torch.zeros(64, 5), x.flatten(1))):
        z = z.clone().requires_grad_(True)
        d = distance_correlation(x_, z)
        (grad,) = torch.autograd.grad(d, z)
        assert float(d.detach()) == 0.0 and torch.equal(grad, torch.zeros_like(grad))


Grads = Dict[str, List[torch.Tensor]]


@functools.lru_cache(maxsize=None)
def _one_step(*overrides: str) -> Tuple[Grads, torch.Tensor]:
    """Each side's parameter gradients of one naive train step (edge front, cloud, edge back:
    partition.front=back=1 of the 5-unit model) and the gradient the cloud received at 'back'
    (cached: the run without a defense is every case's reference)."""
    received: List[torch.Tensor] = []
    original = Boundary._received

    def record(self: Boundary, pass_: str, out: torch.Tensor, crossing: Any) -> torch.Tensor:
        if self.name == "back" and pass_ == "backward":
            received.append(out.detach().clone())
        return original(self, pass_, out, crossing)
    cfg = compose_config([*TINY, *TEST_MODEL, "compressor=none", "pipeline_backend=naive", *overrides])
    backend, parts, (x, y, ids) = backend_and_batch(cfg, CommMeter())
    backend.start_epoch(0)
    backend.train(True)
    with mock.patch.object(Boundary, "_received", record):
        backend.train_step(x, y, ids)
    units = parts.split.units
    sides = {"front": units[:1], "cloud": units[1:-1], "back": units[-1:]}
    grads = {side: [p.grad.clone() for u in us for p in u.parameters() if p.grad is not None]
             for side, us in sides.items()}
    return grads, received[0]


def _same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b))


@pytest.mark.parametrize("defense,changes", [
    # noise on the gradient sent: what the cloud gets (and, through it, the front's); not the back's
    ("privacy.grad_noise=0.5", {"received", "cloud", "front"}),
    ("privacy.max_norm=true", {"received", "cloud", "front"}),
    # a loss term of the front's input and output: its gradient enters at the front's output
    ("privacy.nopeek_weight=0.5", {"front"}),
])
def test_each_defense_changes_only_what_it_should(defense: str, changes: set) -> None:
    plain, plain_received = _one_step()
    grads, received = _one_step(defense)
    changed = {side for side in plain if not _same(plain[side], grads[side])}
    if not torch.equal(received, plain_received):
        changed.add("received")
    assert changed == changes
    if defense == "privacy.max_norm=true":  # each sample's gradient along itself; the largest as it was
        raw, got = plain_received.flatten(1), received.flatten(1)
        cosine = torch.nn.functional.cosine_similarity(raw, got, dim=1).abs()
        torch.testing.assert_close(cosine, torch.ones_like(cosine))
        largest = int(raw.norm(dim=1).argmax())
        assert torch.equal(got[largest], raw[largest])


def test_naive_and_gpipe_give_the_same_losses_with_the_defenses_on(make_cfg: Callable) -> None:
    common = [*TEST_MODEL, "compressor=quantize", *ALL_ON]
    naive, _ = train_losses(make_cfg(*common, "pipeline_backend=naive"), steps=2)
    gpipe, _ = train_losses(make_cfg(*common, "pipeline_backend=gpipe", "pipeline_backend.chunks=1"), steps=2)
    assert naive == gpipe


@pytest.mark.slow
def test_gpipe_and_dist_give_the_same_losses_with_the_defenses_on() -> None:
    cfg = dist_config(chunks=2, compressor="quantize", threads=1)
    for item in ALL_ON:
        key, value = item.split("=")
        OmegaConf.update(cfg, key, True if value == "true" else float(value))
    batches = data(3, batch=10)
    gpipe, _ = train_backend("gpipe", cfg, batches)
    dist, _ = train_backend("dist", cfg, batches)
    assert dist == pytest.approx(gpipe, rel=1e-5, abs=1e-6)


def test_a_resumed_run_draws_the_same_gradient_noise(make_cfg: Callable) -> None:
    """Two epochs in one go, and the second again from the state after the first: the same
    losses, bit for bit (the noise is keyed by the boundary's step, which the state holds)."""
    cfg = make_cfg(*TEST_MODEL, "compressor=none", "pipeline_backend=naive", "privacy.grad_noise=1.0")
    backend, _, (x, y, ids) = backend_and_batch(cfg, CommMeter())
    batches = [(x[:32], y[:32], ids[:32]), (x[32:], y[32:], ids[32:])]

    def epoch(b: Backend, e: int) -> List[float]:
        b.start_epoch(e)
        b.train(True)
        return [b.train_step(*batch).loss_sum for batch in batches]
    epoch(backend, 0)
    state = copy.deepcopy(backend.state_dict())
    straight = epoch(backend, 1)
    resumed, _, _ = backend_and_batch(cfg, CommMeter())
    resumed.load_state_dict(state)
    assert epoch(resumed, 1) == straight


@pytest.mark.parametrize("override", ["privacy.grad_noise=-0.1", "privacy.nopeek_weight=inf"])
def test_defense_weights_out_of_range_name_the_key(make_cfg: Callable, override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        validate(make_cfg(override))
