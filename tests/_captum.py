"""A Captum concept classifier that trains exactly as featvis's linear CAV (the same split, SGD options and seed), so
Captum's TCAV and featvis's can be compared on identical CAVs (tests/concepts/test_tcav.py and
benchmarks/tcav_crosscheck.py, which puts this folder on its path)."""

from __future__ import annotations

import torch

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
