"""The render loop: optimize a parameterization so the objective, seen through random transforms, is maximal.

`render_steps` yields each step's state (live previews, notebooks, the web UI's progress stream); `render`
drives it to a result. Layer objectives run the model only up to their deepest layer (`forward_until`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from featvis.errors import FeatvisError
from featvis.layers import capture, find_layer, forward_until
from featvis.models.classifier import frozen
from featvis.optvis.objectives import LOGITS, Context, Objective
from featvis.optvis.param import image as default_param
from featvis.optvis.transforms import Transform, compose, fixed_size_transforms

PostStep = tuple[int, Callable[[nn.Module, int], None]]  # (every k steps, fn(param, step))


@dataclass(frozen=True)
class StepState:
    step: int
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], detached
    scores: torch.Tensor  # [B] objective values at this step


@dataclass(frozen=True)
class RenderResult:
    """The optimized images, their objective values, snapshots and timings."""

    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    scores: torch.Tensor  # [B] final objective values
    objective: str
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.seconds / max(self.steps, 1)

    def _repr_png_(self) -> bytes:
        from featvis.figures import figure_png, render_grid

        return figure_png(render_grid(self.images, self.titles or [self.objective] * self.images.shape[0]))


def evaluate(clf, objective: Objective, images: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The objective on `seen` (the transformed images); `images` are what penalties look at."""
    ctx = Context(images=images, clf=clf)
    layers = [n for n in objective.layers if n != LOGITS]
    canon = {n: find_layer(clf, n)[0] for n in layers}
    if LOGITS in objective.layers:
        with capture(clf, list(dict.fromkeys(canon.values()))) as cap:
            ctx.acts[LOGITS] = clf(seen)
        ctx.acts.update({n: cap.act(c) for n, c in canon.items()})
    elif layers:
        acts = forward_until(clf, seen, list(dict.fromkeys(canon.values())))
        ctx.acts.update({n: acts[c] for n, c in canon.items()})
    return objective(ctx)


def _normalized_step(param: nn.Module, lr: float) -> None:
    """x += lr · g / ‖g‖₂ per image (the lab's update); `.grad` holds the gradient of the loss = −score."""
    with torch.no_grad():
        for p in param.parameters():
            if p.grad is None:
                continue
            norm = p.grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr * p.grad / norm)
            p.grad = None


def render_steps(clf, objective: Objective, *, param: nn.Module | None = None, size: int = 128, batch: int = 1,
                 transforms: Sequence[Transform] | None = None, steps: int = 256, optimizer: str = "adam",
                 lr: float = 0.05, seed: int = 0, model_size: int | None = None,
                 post_step: Sequence[PostStep] = ()) -> Iterator[StepState]:
    """Yield the state after each optimization step (step 0 is the initial image).

    Args:
        objective: what to maximize (see `featvis.optvis.objectives`).
        param: an nn.Module returning [B, 3, H, W] in [0, 1] (default: Fourier + decorrelated colour, `size`, `batch`).
        transforms: applied each step before the model (default: Lucid's robustness at one size; [] for none).
        steps: optimization steps.
        optimizer: "adam" (on the parameters, rate `lr`) or "normalized" (the lab's lr · g / ‖g‖ ascent).
        seed: seeds the initial image and every random transform: same seed, same result on CPU.
        model_size: resize what the model sees to this side (default: leave the size as it is).
        post_step: (every k, fn(param, step)) operations after a step, e.g. the lab's periodic blur and clamp.
    """
    gen = torch.Generator().manual_seed(seed)
    device = clf.device
    if param is None:
        param = default_param(size, batch, generator=gen)
    param = param.to(device)
    chain = compose(fixed_size_transforms() if transforms is None else list(transforms))
    if optimizer == "adam":
        opt = torch.optim.Adam(param.parameters(), lr=lr)
    elif optimizer != "normalized":
        raise FeatvisError(f"unknown optimizer {optimizer!r}; use 'adam' or 'normalized'")
    with frozen(clf):
        for step in range(steps + 1):
            images = param()
            seen = chain(images, gen)
            if model_size is not None and seen.shape[-1] != model_size:
                seen = F.interpolate(seen, size=(model_size, model_size), mode="bilinear", align_corners=False)
            scores = evaluate(clf, objective, images, seen)
            yield StepState(step, images.detach(), scores.detach())
            if step == steps:
                break
            loss = -scores.sum()  # the one place the sign flips: objectives are maximized
            if optimizer == "adam":
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                loss.backward()
                _normalized_step(param, lr)
            for every, fn in post_step:
                if every and (step + 1) % every == 0:
                    fn(param, step + 1)


def render(clf, objective: Objective, *, snapshots: Sequence[int] = (), callback: Callable[[StepState], None]
           | None = None, titles: Sequence[str] = (), **options) -> RenderResult:
    """Run `render_steps` to the end and return the images (see `render_steps` for the options).

    Example:
        >>> res = render(clf, objectives.channel("blocks.10", 7), size=128, steps=256)
        >>> res.images.shape
        torch.Size([1, 3, 128, 128])
    """
    keep = set(snapshots)
    shots: dict[int, torch.Tensor] = {}
    t0 = time.perf_counter()
    state = None
    for state in render_steps(clf, objective, **options):
        if state.step in keep:
            shots[state.step] = state.images.cpu()
        if callback is not None:
            callback(state)
    assert state is not None
    seconds = time.perf_counter() - t0
    params = {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}
    return RenderResult(state.images, state.scores, objective.name, shots, state.step, seconds, params, list(titles))
