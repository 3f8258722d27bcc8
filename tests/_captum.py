"""Captum made comparable to featvis, for the tests and the cross-check benchmarks (which put this folder on their
path): a concept classifier that trains exactly as featvis's linear CAV (the same split, SGD options and seed), so
Captum's TCAV and featvis's compare on identical CAVs (tests/concepts/test_tcav.py, benchmarks/tcav_crosscheck.py);
and a copy of a model whose ReLU6 Captum's modified-gradient methods hook (tests/attribution/test_smooth.py,
benchmarks/smooth_crosscheck.py)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from featvis.concepts.cav import SGD_OPTIONS, split_indices


def same_classifier(random_id: int = 100):
    """Random set i has Captum concept id `random_id + i`; featvis trains its CAV against it with seed i (seed 0)."""
    from captum.concept._utils.classifier import Classifier
    from sklearn.linear_model import SGDClassifier

    class Same(Classifier):
        def __init__(self):
            self.w, self.ids = None, None

        def train_and_eval(self, dataloader, **kwargs):
            xs, ys = zip(*dataloader, strict=True)
            x, y = torch.cat(xs), torch.cat(ys)
            concept_id, other_id = int(y[0]), int(y[-1])  # the experimental set's concept comes first
            is_concept = (y == concept_id).long()
            seed = other_id - random_id
            train, test = split_indices(int(is_concept.sum()), int((1 - is_concept).sum()), seed)
            model = SGDClassifier(**SGD_OPTIONS, random_state=seed).fit(x[train].numpy(), is_concept[train].numpy())
            self.w, self.ids = torch.tensor(model.coef_[0], dtype=torch.float32), [other_id, concept_id]
            return {"accs": float((model.predict(x[test].numpy()) == is_concept[test].numpy()).mean())}

        def weights(self):
            return torch.stack([-self.w, self.w])

        def classes(self):
            return self.ids

    return Same()


class ReLU6AsReLU(nn.ReLU):
    """ReLU6 that Captum's modified-gradient methods recognize (they hook `nn.ReLU` only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 6)


def captum_copy(clf):
    """A deep copy of `clf` whose ReLU6 modules are `ReLU6AsReLU` (the same function, one Captum hooks)."""
    out = copy.deepcopy(clf)
    for parent in out.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, ReLU6AsReLU())
    return out
