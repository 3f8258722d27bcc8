"""Matplotlib figures drawn from results (never from models). Every function returns a Figure to restyle or save.

Heatmaps are scaled to [0, 1] after clipping the top `OUTLIER_PCT` % (as Captum's `outlier_perc`): per image by
default, or one shared scale across all maps (`shared_scale=True`); each figure says which.

The saliency and fooling figures are drawn for the HTML report's 1,064 px column: at the tasks' 110 dpi they are at
most 9.6 in (four PANEL_IN panels) wide, so they show at their own pixel size, and no text is smaller than TEXT_PT
(13.75 px at 110 dpi).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.figure
import numpy as np
import torch

from featvis.images import to_uint8

OUTLIER_PCT = 1.0
CMAP = "inferno"
TITLE_PT = 10  # panel titles (p, L∞, PSNR, AUCs): 15 px at 110 dpi
TEXT_PT = 9  # the smallest text in a figure (scores, scale notes, colour-bar ticks)
PANEL_IN = 2.4  # one image panel; four fill 9.6 in, 1,056 px at 110 dpi: the report's column shows them 1:1
TITLE_CHARS = 30  # a title line longer than this is wrapped (about a panel's width at TITLE_PT)
METHODS_PER_ROW = 3  # compare_methods starts a new pair of rows after this many methods
DIFF_GAIN = 10  # the lab's magnified difference


class Figure(matplotlib.figure.Figure):
    """A matplotlib figure made without pyplot: no backend is chosen or changed at import (a notebook keeps its
    inline backend, a server needs no display), nothing global keeps it alive, and it shows itself in Jupyter as a
    PNG (a plain Figure made this way showed `<Figure size 1100x290 with 4 Axes>`, issue 22)."""

    def _repr_png_(self) -> bytes:
        return figure_png(self, dpi=FIGURE_DPI, close=False)


FIGURE_DPI = 100  # what a notebook shows


def subplots(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True,
             constrained_layout: bool = True, **grid) -> tuple[Figure, object]:
    """`plt.subplots` without pyplot: a `Figure` and its axes."""
    fig = Figure(figsize=figsize, layout="constrained" if constrained_layout else None)
    return fig, fig.subplots(rows, cols, squeeze=squeeze, **grid)


def _img(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x)


def _fit(text: str) -> str:
    """A title wrapped to TITLE_CHARS per line, so a long class name does not run into the next panel."""
    return "\n".join(textwrap.fill(line, TITLE_CHARS) or line for line in str(text).split("\n"))


def difference_gain(delta: torch.Tensor) -> float:
    """The factor that takes the largest |Δ| to black or white around mid-grey (0.5 + gain·Δ); 1 when Δ is zero."""
    top = float(delta.abs().max())
    return 0.5 / top if top > 0 else 1.0


def scale_maps(maps: Sequence[torch.Tensor], shared: bool, signed: bool = False) -> list[np.ndarray]:
    """Maps [H, W] to arrays in [0, 1] ([-1, 1] if signed), clipping the top OUTLIER_PCT % of |values|."""
    arrs = [m.detach().float().cpu().numpy() for m in maps]
    tops = [np.percentile(np.abs(a), 100 - OUTLIER_PCT) or (np.abs(a).max() or 1.0) for a in arrs]
    if shared:
        tops = [max(tops)] * len(arrs)
    lo = -1.0 if signed else 0.0
    return [np.clip((a if signed else np.abs(a)) / t, lo, 1.0) for a, t in zip(arrs, tops, strict=True)]


def overlay(image: torch.Tensor, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with a heatmap in [0, 1] blended on top (RGB uint8)."""
    colours = matplotlib.colormaps[CMAP](heat)[..., :3]
    base = _img(image).astype(np.float32) / 255
    return (np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255).astype(np.uint8)


def saliency_panels(images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], *, method: str = "",
                    shared_scale: bool = False) -> Figure:
    """One row per image: image (with its class and probability) | heatmap with colour bar | overlay."""
    scaled = scale_maps(list(maps), shared_scale)
    n = len(scaled)
    fig, axes = subplots(n, 3, figsize=(4 * PANEL_IN, 3.2 * n), squeeze=False, constrained_layout=True)
    for i in range(n):
        axes[i, 0].imshow(_img(images[i]))
        axes[i, 0].set_title(_fit(titles[i]), fontsize=TITLE_PT)
        im = axes[i, 1].imshow(scaled[i], cmap=CMAP, vmin=0, vmax=1)
        axes[i, 1].set_title(_fit(method or "saliency"), fontsize=TITLE_PT)
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=TEXT_PT)
        axes[i, 2].imshow(overlay(images[i], scaled[i]))
        axes[i, 2].set_title("overlay", fontsize=TITLE_PT)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"colour scale: {'shared across images' if shared_scale else 'per image'}", fontsize=TEXT_PT)
    return fig


def compare_methods(image: torch.Tensor, maps: Mapping[str, torch.Tensor], title: str, *,
                    shared_scale: bool = False, scores: Mapping[str, str] | None = None) -> Figure:
    """One image and several methods side by side: heatmaps on top, overlays below (with `scores` as their titles);
    after METHODS_PER_ROW methods a new pair of rows starts, so the figure stays readable at the report's width."""
    names = list(maps)
    scaled = scale_maps([maps[n] for n in names], shared_scale)
    pairs = max(1, -(-len(names) // METHODS_PER_ROW))
    per_row = max(1, -(-len(names) // pairs))  # balanced: 4 methods are two rows of 2, not 3 and 1
    fig, axes = subplots(2 * pairs, per_row + 1, figsize=(PANEL_IN * (per_row + 1), 2.6 * 2 * pairs),
                             squeeze=False, constrained_layout=True)
    axes[0, 0].imshow(_img(image))
    axes[0, 0].set_title(_fit(title), fontsize=TITLE_PT)
    im = None
    for j, (name, heat) in enumerate(zip(names, scaled, strict=True)):
        row, col = 2 * (j // per_row), 1 + j % per_row
        im = axes[row, col].imshow(heat, cmap=CMAP, vmin=0, vmax=1)
        axes[row, col].set_title(_fit(name), fontsize=TITLE_PT)
        axes[row + 1, col].imshow(overlay(image, heat))
        if scores and name in scores:
            axes[row + 1, col].set_title(_fit(scores[name]), fontsize=TEXT_PT)
    if im is not None:
        fig.colorbar(im, ax=axes[0, -1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=TEXT_PT)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"colour scale: {'shared across methods' if shared_scale else 'per map'}", fontsize=TEXT_PT)
    return fig




def sanity_curves(units: Sequence[str], methods: Mapping[str, Mapping]) -> Figure:
    """Rank correlation with the original map as blocks are randomized from the logits down, per method.

    `methods`: name -> {"spearman_abs": [n], "ssim": [n], "flagged": bool} (means over the images).
    """
    fig, axes = subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    x = np.arange(1, len(units) + 1)
    for name, m in methods.items():
        tag = " (flagged)" if m.get("flagged") else ""
        axes[0].plot(x, np.asarray(m["spearman_abs"], dtype=float), marker="o", ms=3, label=name + tag)
        axes[1].plot(x, np.asarray(m["ssim"], dtype=float), marker="o", ms=3, label=name + tag)
    for ax, title in zip(axes, ("Spearman rank correlation of |map|", "SSIM"), strict=True):
        ax.set_xticks(x, list(units), rotation=70, fontsize=6)
        ax.set_ylabel(title)
        ax.set_xlabel("randomized down to (cascading)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    return fig


def robustness_curve(curves: Mapping[str, object]) -> Figure:
    """Fraction of images fooled against the budget ε (in 8-bit levels), one line per attack or model.

    `curves`: name -> a RobustnessResult, or a dict with "eps" ([0, 1] units), "fooled_rate" and "norm".
    """
    fig, ax = subplots(figsize=(5.2, 3.6), constrained_layout=True)
    norms = set()
    for name, c in curves.items():
        eps, rate, norm = (c["eps"], c["fooled_rate"], c["norm"]) if isinstance(c, Mapping) else \
            (c.eps, c.fooled_rate, c.norm)
        norms.add(norm)
        scale = 255 if norm == "linf" else 1
        ax.plot([0, *(e * scale for e in eps)], [0, *(100 * r for r in rate)], marker="o", ms=4, label=name)
    linf = norms == {"linf"}
    ax.set_xlabel("budget ε (L∞, 8-bit levels /255)" if linf else "budget ε (L2, [0, 1] units)")
    ax.set_ylabel("images fooled (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def draw(result, **options) -> Figure:
    """The one door from a result to its figure (Jupyter's `_repr_png_`, `Result.figure()`, the web API).

    SaliencyResult: image | maps | overlays; FoolingResult: the lab's four panels; RobustnessResult: the curve;
    RenderResult: the image grid; SanityResult: the randomization curves; AccentuationResult: original |
    accentuated | difference; EvaluationResult: the deletion/insertion curves. Result classes import no figure
    function: this is the only way from a result to a picture.
    """
    kind = type(result).__name__
    if kind == "SaliencyResult":
        i = options.get("index", 0)
        title = f"{result.names[i]} ({int(result.targets[i])}) p={float(result.probs[i]):.3f}"
        return compare_methods(result.images[i], {k: v[i] for k, v in result.maps.items()}, title,
                               shared_scale=options.get("shared_scale", False))
    if kind == "FoolingResult":
        return fooling_panels(result, **options)
    if kind == "RobustnessResult":
        return robustness_curve({result.method: result})
    if kind == "RenderResult":
        return render_grid(result.images, result.titles or [result.objective] * result.images.shape[0])
    if kind == "SanityResult":
        return sanity_curves(result.units, {result.method: {"spearman_abs": result.spearman_abs.mean(1).tolist(),
                                                            "ssim": result.ssim.mean(1).tolist(),
                                                            "flagged": result.flagged}})
    if kind == "AccentuationResult":
        return accentuation_panels(result, **options)
    if kind == "EvaluationResult":
        return evaluation_curves(result.records)
    raise TypeError(f"featvis has no figure for {kind}")


def figure_png(fig: matplotlib.figure.Figure, dpi: int = 80, close: bool = True) -> bytes:
    """The figure as PNG bytes (for Jupyter's _repr_png_, the report and the web API)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # a pyplot figure of an interactive backend keeps working; ours have no canvas yet
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        _close(fig)
    return buf.getvalue()


def _close(fig: matplotlib.figure.Figure) -> None:
    """Release a figure pyplot may know of (a caller's own); ours are not in pyplot and need nothing."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)




def fooling_panels(result, max_rows: int = 8) -> Figure:
    """The lab's panels, one row per image: original | fooled | difference | difference ×10.

    Differences are shown around mid-grey (0.5 + gain·Δ). The plain Δ of an attack within 3/255 spans seven grey
    levels, so the third panel scales each image's Δ until its largest change is black or white (`difference_gain`,
    the factor in its title); the fourth is the lab's fixed ×DIFF_GAIN.
    """
    n = min(result.images.shape[0], max_rows)
    fig, axes = subplots(n, 4, figsize=(4 * PANEL_IN, 2.9 * n), squeeze=False, constrained_layout=True)
    rows = result.records()
    for i in range(n):
        r = rows[i]
        delta = result.images[i] - result.original[i]
        axes[i, 0].imshow(_img(result.original[i]))
        axes[i, 0].set_title(f"{_fit(r['original_name'])}\np={r['original_prob_before']:.3f}", fontsize=TITLE_PT)
        axes[i, 1].imshow(_img(result.images[i]))
        shown = r["target_name"] if r["target"] is not None else r["predicted_name"]
        p = r["target_prob_after"] if r["target"] is not None else None
        verdict = "fooled" if r["success"] else "not fooled"
        axes[i, 1].set_title(f"{_fit(shown)}{f' p={p:.3f}' if p is not None else ''}\n{verdict}, {r['steps']} steps",
                             fontsize=TITLE_PT)
        gain = difference_gain(delta)
        axes[i, 2].imshow(_img((0.5 + gain * delta).clamp(0, 1)))
        axes[i, 2].set_title(f"difference ×{gain:.3g}{' (no change)' if not delta.any() else ''}\n"
                             f"L∞ {r['linf_255']}/255, L2 {r['l2']:.2f}", fontsize=TITLE_PT)
        axes[i, 3].imshow(_img((0.5 + DIFF_GAIN * delta).clamp(0, 1)))
        axes[i, 3].set_title(f"difference ×{DIFF_GAIN}\nPSNR {r['psnr_db']:.1f} dB", fontsize=TITLE_PT)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"differences around mid-grey: scaled per image until its largest change is black or white, then "
                 f"×{DIFF_GAIN} (the lab's)", fontsize=TEXT_PT)
    return fig


def render_grid(images: torch.Tensor, titles: Sequence[str], cols: int = 5) -> Figure:
    """A grid of rendered images with their titles (class/channel names and scores)."""
    n = images.shape[0]
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(_img(images[i]))
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=8)
    return fig




def accentuation_panels(result, max_rows: int = 8, gain: float = 4.0) -> Figure:
    """Feature accentuation, one row per photo: original | accentuated | difference (0.5 + gain·Δ)."""
    n = min(result.original.shape[0], max_rows)
    fig, axes = subplots(n, 3, figsize=(8.4, 2.9 * n), squeeze=False, constrained_layout=True)
    for i in range(n):
        delta = result.accentuated[i] - result.original[i]
        axes[i, 0].imshow(_img(result.original[i]))
        axes[i, 0].set_title(f"original\n{result.layer}:{result.channels[i]} = {float(result.before[i]):.2f}",
                             fontsize=9)
        axes[i, 1].imshow(_img(result.accentuated[i]))
        axes[i, 1].set_title(f"accentuated\nactivation {float(result.after[i]):.2f}", fontsize=9)
        axes[i, 2].imshow(_img((0.5 + gain * delta).clamp(0, 1)))
        axes[i, 2].set_title(f"difference ×{gain:g}\nPSNR {float(result.psnr[i]):.1f} dB", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    return fig


def _band(rows: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over images (rows) and its percentile-bootstrap 95 % interval, per column."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, rows.shape[0], size=(resamples, rows.shape[0]))
    means = rows[idx].mean(1)
    return rows.mean(0), np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def evaluation_curves(records: Sequence[Mapping], methods: Sequence[str] | None = None) -> Figure:
    """Deletion and insertion curves over a data set: per method the mean over images and a bootstrap 95 % band.

    `records`: per-image records of `featvis.attribution.evaluation.evaluate_batch` (their "curves").
    """
    names = list(methods or dict.fromkeys(m for r in records for m in r.get("curves", {})))
    fig, axes = subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher"), strict=True):
        for name in names:
            rows = [r["curves"][name][kind] for r in records if name in r.get("curves", {})]
            if not rows:
                continue
            arr = np.asarray(rows, dtype=np.float64)
            mean, lo, hi = _band(arr)
            x = np.linspace(0, 1, arr.shape[1])
            auc = float(((arr[:, 1:] + arr[:, :-1]) / 2).mean(1).mean())
            style = {"color": "grey", "ls": "--"} if name == "random" else {}
            (line,) = ax.plot(x, mean, lw=1.4, label=f"{name} ({auc:.3f})", **style)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(f"{kind} ({better} AUC is better); band: 95 % bootstrap over {len(records)} images", fontsize=9)
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "revealed"))
        ax.set_ylabel("p(class)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, ncol=2)
    return fig


def method_strip(images: torch.Tensor, maps: Mapping[str, torch.Tensor], titles: Sequence[str] = (), *,
                 shared_scale: bool = False) -> Figure:
    """Example maps as a method × image grid: one row per method, one column per image (overlays)."""
    names = list(maps)
    n = images.shape[0]
    fig, axes = subplots(len(names) + 1, n, figsize=(1.9 * n, 1.9 * (len(names) + 1)), squeeze=False,
                             constrained_layout=True)
    for j in range(n):
        axes[0, j].imshow(_img(images[j]))
        axes[0, j].set_title(titles[j] if j < len(titles) else "", fontsize=7)
    for i, name in enumerate(names, start=1):
        scaled = scale_maps(list(maps[name]), shared_scale)
        for j in range(n):
            axes[i, j].imshow(overlay(images[j], scaled[j]))
        axes[i, 0].text(-0.08, 0.5, name, transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(f"colour scale: {'shared across images' if shared_scale else 'per map'}", fontsize=8)
    return fig
