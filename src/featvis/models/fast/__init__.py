"""The fast path: a separate inference copy of a classifier's network, used by `Classifier.forward` whenever nothing
could tell the difference (issue 17).

Every gradient method costs about one forward+backward of the network (benchmarks/floor.py), so that pass is the
one to make fast. The copy differs from the user's network in these ways, all exact up to float rounding:

- BatchNorm folded into the convolution that feeds it. In eval mode y = γ(conv(x) − μ)/√(σ² + ε) + β is one
  convolution with weights w·γ/√(σ² + ε) and bias β + (b − μ)·γ/√(σ² + ε): one pass over every activation less,
  forward and backward. timm's BatchNormAct2d (BatchNorm and activation in one module) folds the same way and
  keeps its activation.
- channels-last activations (NHWC), the layout oneDNN's depthwise and 1×1 convolutions run fastest in; the input
  gradient comes back in the caller's layout.
- ReLU6 fused into the folded convolution before it (oneDNN post-op) where the BatchNorm's output feeds only that
  ReLU6: the convolution writes clamped values, and the ReLU6 module passes them through (relu6 is idempotent). The
  backward masks the gradient where 0 < y < 6, as ReLU6's own backward does, in place where the gradient is a new
  tensor only a convolution's backward made.
- TensorFlow "same" padding without a padded copy: at stride 1 the convolution pads itself, and a stride-2 depthwise
  convolution whose padding is one larger after than before runs a kernel one tap wider (a zero tap) instead.

The user's network is never modified: the copy shares every module it does not change and owns only the folded
convolutions and the containers above them. It runs only when the user's network would compute the same thing:
every module in eval mode, no hooks and no swapped forward anywhere in the network (guided backprop and Captum's
layer methods see the user's modules), no folded parameter that needs a gradient, and no tracing. featvis's own
layer hooks (`capture`, `tap`, `forward_until`) are the exception: they are served on the copy wherever it computes
that layer's output as the user's network does (issue 23; `serving`). It is rebuilt when a tensor it was made from
is replaced, moved or changed in place; an in-place edit through `.data` bypasses PyTorch's version counters, so
call `refresh(clf)` after one. A fallback that costs speed (a probe that disagrees, a network rebuilt too often, a
private torch API gone) is logged once per network at WARNING.

Switches: `clf.fast = False` (or `FEATVIS_FAST=0`) runs the user's network; `clf.fast = FastOptions(autocast="bf16")`
(or `FEATVIS_FAST=bf16`) adds bfloat16 autocast, which is not within float tolerance and so is never the default;
`FastOptions(compile=True)` (`FEATVIS_FAST=compile`) compiles the copy for input shapes that recur (loops) — the
GPU path is `FEATVIS_FAST=bf16,compile` (benchmarks/gpu.sh).

Modules: `options` (FastOptions, the switch), `gate` (may the copy run; the cache and its lock), `entry` (a copy,
built and run), `plan` (which pairs fold and fuse), `fold` (the folded copy), `kernels` (its modules and autograd
Functions), `known` (third-party classes by type), `serving` (layer hooks on the copy), `_compat` (every private
PyTorch API). Measured timings behind its constants: benchmarks/results/fast_path_timings.md.
"""

from featvis.models.fast.entry import MIN_CONVS, Entry
from featvis.models.fast.gate import _CACHE as _CACHE  # private names re-exported for tests and benchmarks
from featvis.models.fast.gate import MAX_BUILDS, fast_logits, refresh, status, user_logits
from featvis.models.fast.kernels import FUSE_MIN_BATCH
from featvis.models.fast.kernels import _ChannelsLast as _ChannelsLast
from featvis.models.fast.kernels import _ConvReLU6 as _ConvReLU6
from featvis.models.fast.kernels import _ConvReLU6Fn as _ConvReLU6Fn
from featvis.models.fast.kernels import _SameConv2d as _SameConv2d
from featvis.models.fast.options import AUTOCASTS, COMPILE_AFTER_CALLS, FastOptions, options
from featvis.models.fast.plan import PROBE_RTOL, Call, trace_calls

__all__ = [
    "AUTOCASTS",
    "COMPILE_AFTER_CALLS",
    "FUSE_MIN_BATCH",
    "MAX_BUILDS",
    "MIN_CONVS",
    "PROBE_RTOL",
    "Call",
    "Entry",
    "FastOptions",
    "fast_logits",
    "options",
    "refresh",
    "status",
    "trace_calls",
    "user_logits",
]
