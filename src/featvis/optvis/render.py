"""The render loop: optimize a parameterization so the objective, seen through random transforms, is maximal.

`render_steps` yields each step's state (live previews, notebooks, the web UI's progress stream); `render`
drives it to a result. Layer objectives run the model only up to their deepest layer (`forward_until`).

Randomness is per image: image i draws its start and its transforms from its own generator, seeded with
`seed + i` (or `seed[i]` when a list is given), so an image does not depend on which batch it is rendered in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from featvis._progress import update
from featvis._types import Result
from featvis.errors import FeatvisError
from featvis.layers import capture, find_layer, forward_until, token_layout
from featvis.models.classifier import frozen
from featvis.optvis.objectives import LOGITS, Context, Objective
from featvis.optvis.param import Seed
from featvis.optvis.param import image as default_param
from featvis.optvis.transforms import Transform, compose, fixed_size_transforms

PostStep = tuple[int, Callable[[nn.Module, int], None]]  # (every k steps, fn(param, step))
OPTIMIZERS = ("adam", "nadam", "normalized")


@dataclass(frozen=True)
class StepState:
    step: int
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], detached
    scores: torch.Tensor  # [B] objective values at this step
    transparency: torch.Tensor | None = None  # [B, H, W] accumulated |∂objective/∂pixel| up to this step


@dataclass(frozen=True, repr=False)
class RenderResult(Result):
    """The optimized images, their objective values, snapshots, timings and transparency maps."""

    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    scores: torch.Tensor  # [B] final objective values
    objective: str
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)
    # [B, H, W]: |∂objective/∂pixel| summed over the steps and averaged over colour channels — where the
    # optimization kept pushing; MACO's transparency / attribution map (Fel et al. 2023)
    transparency: torch.Tensor | None = None

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.seconds / max(self.steps, 1)


def evaluate(clf, objective: Objective, images: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The objective on `seen` (the transformed images; several views per image when it is a multiple of the
    batch, view-major), averaged over views; `images` are what penalties look at. Returns [B]."""
    b = images.shape[0]
    if seen.shape[0] % b:
        raise FeatvisError(f"the model saw {seen.shape[0]} images for a batch of {b}; transforms must keep the batch")
    views = seen.shape[0] // b
    ctx = Context(images=images.repeat(views, 1, 1, 1) if views > 1 else images, clf=clf, views=views,
                  seen=seen)
    layers = [n for n in objective.layers if n != LOGITS]
    canon = {n: find_layer(clf, n)[0] for n in layers}
    if LOGITS in objective.layers:
        with capture(clf, list(dict.fromkeys(canon.values()))) as cap:
            ctx.acts[LOGITS] = clf(seen)
        ctx.acts.update({n: cap.act(c) for n, c in canon.items()})
    elif layers:
        acts = forward_until(clf, seen, list(dict.fromkeys(canon.values())))
        ctx.acts.update({n: acts[c] for n, c in canon.items()})
    scores = objective(ctx)
    if scores.shape[0] != seen.shape[0] and views > 1:
        raise FeatvisError(f"objective {objective.name!r} gave {scores.shape[0]} scores for {seen.shape[0]} views")
    return scores.view(views, b).mean(0) if views > 1 else scores


def fixed_input_side(clf: nn.Module) -> int | None:
    """The one image side a model accepts (a transformer with a fixed patch grid), or None when any side goes."""
    layout = token_layout(clf)
    if layout is None or layout.grid is None:
        return None
    side = getattr(clf, "input_size", None)
    return int(side) if isinstance(side, int) else None


def per_image_seeds(seed: Seed, batch: int) -> list[int]:
    """`seed + i` for image i, or the given per-image seeds (checked against the batch)."""
    if isinstance(seed, (int,)) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        return [int(seed) + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise FeatvisError(f"got {len(seeds)} seeds for {batch} images; give one seed or one per image")
    return seeds


def _views(chain: Transform, images: torch.Tensor, gens: list[torch.Generator], views: int) -> torch.Tensor:
    drawn = [chain(images, gens) for _ in range(views)]
    if len({v.shape for v in drawn}) > 1:
        raise FeatvisError(f"views={views} needs transforms that keep one output shape (these gave "
                           f"{sorted({tuple(v.shape[-2:]) for v in drawn})}); use views=1 or same-size transforms")
    return torch.cat(drawn)


def _normalized_step(param: nn.Module, lr: float) -> None:
    """x += lr · g / ‖g‖₂ per image (the lab's update); `.grad` holds the gradient of the loss = −score."""
    with torch.no_grad():
        for p in param.parameters():
            if p.grad is None:
                continue
            norm = p.grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr * p.grad / norm)


MIN_SIDE, MAX_SIDE = 16, 1024  # below 16 px a 32×-downsampling CNN sees under one feature-map cell; above, memory


def check_render(*, size: int | None = None, steps: int | None = None, batch: int | None = None) -> None:
    """The one check of a render's size, steps and batch (the Python API, the tasks and the CLI all call it)."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not MIN_SIDE <= size <= MAX_SIDE):
        raise FeatvisError(f"size must be {MIN_SIDE}..{MAX_SIDE} pixels, got {size!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise FeatvisError(f"steps must be a whole number >= 0 (0: the starting image), got {steps!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise FeatvisError(f"batch must be at least 1, got {batch!r}")


def render_steps(clf, objective: Objective, *, param: nn.Module | None = None, size: int = 128, batch: int = 1,
                 transforms: Sequence[Transform] | None = None, steps: int = 256, optimizer: str = "adam",
                 lr: float = 0.05, seed: Seed = 0, model_size: int | None = None, views: int = 1,
                 penalty: Objective | None = None, post_step: Sequence[PostStep] = ()) -> Iterator[StepState]:
    """Yield the state after each optimization step (step 0 is the initial image).

    The model is frozen (eval mode, no parameter gradients) only while a step computes, never across a `yield`:
    a generator left half-consumed leaves the model as it was.

    Args:
        objective: what to maximize (see `featvis.optvis.objectives`).
        param: an nn.Module returning [B, 3, H, W] in [0, 1] (default: Fourier + decorrelated colour, `size`, `batch`).
        transforms: applied each step before the model (default: Lucid's robustness at one size; [] for none).
        steps: optimization steps.
        optimizer: "adam" or "nadam" (on the parameters, rate `lr`), or "normalized" (the lab's lr · g / ‖g‖).
        seed: an int (image i uses seed + i) or one seed per image; seeds the start and every random transform,
            so the same seed gives the same image on CPU, whatever batch the image is in.
        model_size: resize what the model sees to this side (default: the model's input size when it accepts only
            that one, as vision transformers with a fixed patch grid do; otherwise leave the size as it is).
        views: transformed views of each image the model sees per step (the objective is averaged over them).
        penalty: an objective added to `objective` (a regularizer, already signed to be maximized).
        post_step: (every k, fn(param, step)) operations after a step, e.g. the lab's periodic blur and clamp.
    """
    check_render(size=size if param is None else None, steps=steps, batch=batch)
    if optimizer not in OPTIMIZERS:
        raise FeatvisError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if views < 1:
        raise FeatvisError(f"views must be at least 1, got {views}")
    full = objective if penalty is None else objective + penalty
    if param is None:
        param = default_param(size, batch, seed=per_image_seeds(seed, batch))
    param = param.to(clf.device)
    chain = compose(fixed_size_transforms() if transforms is None else list(transforms))
    if model_size is None:
        model_size = fixed_input_side(clf)
    params = [p for p in param.parameters() if p.requires_grad]
    opt = None
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "nadam":
        opt = torch.optim.NAdam(params, lr=lr)
    gens: list[torch.Generator] | None = None
    transparency = None
    for step in range(steps + 1):
        with frozen(clf):
            images = param()
            if gens is None:
                gens = [torch.Generator().manual_seed(s) for s in per_image_seeds(seed, images.shape[0])]
            seen = chain(images, gens) if views == 1 else _views(chain, images, gens, views)
            if model_size is not None and seen.shape[-1] != model_size:
                seen = F.interpolate(seen, size=(model_size, model_size), mode="bilinear", align_corners=False)
            scores = evaluate(clf, full, images, seen)
            if step < steps:
                loss = -scores.sum()  # the one place the sign flips: objectives are maximized
                *grads, pixel_grads = torch.autograd.grad(loss, [*params, images])
                mass = pixel_grads.detach().abs().mean(1)
                transparency = mass if transparency is None else transparency + mass
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                if opt is not None:
                    opt.step()
                else:
                    _normalized_step(param, lr)
                for every, fn in post_step:  # they may read the step's gradient (Yosinski's contribution clip)
                    if every and (step + 1) % every == 0:
                        fn(param, step + 1)
                for p in params:
                    p.grad = None
        state = StepState(step, images.detach(), scores.detach(), transparency)
        update("render", step, steps, preview=state.images)
        yield state


def render(clf, objective: Objective, *, snapshots: Sequence[int] = (), callback: Callable[[StepState], None]
           | None = None, titles: Sequence[str] = (), **options) -> RenderResult:
    """Run `render_steps` to the end and return the images (see `render_steps` for the options).

    Example:
        >>> res = render(clf, objectives.channel("blocks.10", 7), size=128, steps=256)
        >>> res.images.shape
        torch.Size([1, 3, 128, 128])
    """
    check_render(steps=options.get("steps"), batch=options.get("batch"))
    keep = set(snapshots)
    shots: dict[int, torch.Tensor] = {}
    t0 = time.perf_counter()
    state = None
    for state in render_steps(clf, objective, **options):
        if state.step in keep:
            shots[state.step] = state.images.cpu()
        if callback is not None:
            callback(state)
    if state is None:  # render_steps yields at least step 0; only a caller's own generator could come here
        raise FeatvisError("the render produced no step; give steps >= 0")
    seconds = time.perf_counter() - t0
    params = {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}
    return RenderResult(state.images, state.scores, objective.name, shots, state.step, seconds, params, list(titles),
                        state.transparency)
