import pytest

from featvis import FeatvisError
from featvis.models import Labels, imagenet_labels


def test_lookup_by_index_name_synonym_and_case():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[281] == "tabby"
    assert labels.lookup("tabby") == labels.lookup("Tabby Cat") == labels.lookup(281) == labels.lookup("281") == 281
    assert labels.lookup("Egyptian cat") == 285
    assert labels.lookup("n02123045") == 281
    assert labels.lookup("stingray") == 6 and labels.lookup("espresso") == 967


def test_unknown_name_lists_three_closest():
    with pytest.raises(FeatvisError, match=r"unknown class 'tabbby cat'.*'tabby cat'") as e:
        imagenet_labels().lookup("tabbby cat")
    assert str(e.value).count("'") >= 8 and "\n" not in str(e.value)


def test_out_of_range_and_ambiguous():
    with pytest.raises(FeatvisError, match="out of range"):
        imagenet_labels().lookup(1000)
    with pytest.raises(FeatvisError, match=r"ambiguous: 134 .*517"):
        imagenet_labels().lookup("crane")
    with pytest.raises(FeatvisError, match="not a class"):
        imagenet_labels().lookup(True)


def test_custom_labels():
    labels = Labels([("cat", "kitty"), ("dog",)])
    assert labels.lookup("KITTY") == 0 and list(labels) == ["cat", "dog"]
    assert Labels.generic(3)[2] == "class 2"
