"""The Python paths earlier docs showed under geomed_ssl.downstream still give the same functions."""

from __future__ import annotations

import importlib

import pytest

OLD_PATHS = {
    "geomed_ssl.downstream.finetune.finetune_segment": "geomed_ssl.finetune.segment.finetune_segment",
    "geomed_ssl.downstream.classify.finetune_classify": "geomed_ssl.finetune.classify.finetune_classify",
    "geomed_ssl.downstream.evaluate.evaluate_dir": "geomed_ssl.finetune.evaluate.evaluate_dir",
    "geomed_ssl.downstream.embed.embed_folder": "geomed_ssl.embeddings.extract.embed_folder",
    "geomed_ssl.downstream.cluster.cluster_embeddings": "geomed_ssl.embeddings.cluster.cluster_embeddings",
    "geomed_ssl.downstream.search.find_similar": "geomed_ssl.embeddings.search.find_similar",
    "geomed_ssl.downstream.attention.attention_for_file": "geomed_ssl.viz.attention.attention_for_file",
}


def resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old, new", sorted(OLD_PATHS.items()))
def test_old_documented_path_is_the_new_function(old: str, new: str) -> None:
    assert resolve(old) is resolve(new)


def test_importing_the_old_package_says_where_things_moved() -> None:
    import geomed_ssl.downstream

    with pytest.warns(DeprecationWarning, match="geomed_ssl.finetune"):
        importlib.reload(geomed_ssl.downstream)
