"""Few-label supervision: label files matched to their images and read as class maps (``pairs``, ``read``,
``grids``), and the exact training / test positions drawn from them (``sampling``; the class map and the draws
per class: ``draws``). Used by ``finetune``,
``compare`` and ``embeddings``; uses none of them."""

from geomed_ssl.labels.grids import check_grid
from geomed_ssl.labels.pairs import (LABEL_SUFFIXES, ground_key, label_grounds, label_sources, match_labels,
                                     read_label_pairs)
from geomed_ssl.labels.read import read_label
from geomed_ssl.labels.draws import ClassMap, Names, class_ids, labelled_pixels, sample_fraction, sample_per_class
from geomed_ssl.labels.sampling import LabelSelection, check_labels_config, sample_images_per_class, select_labels
from geomed_ssl.windows.splits import block_split

__all__ = [
    "LABEL_SUFFIXES", "check_grid", "match_labels", "read_label", "read_label_pairs", "label_sources",
    "ground_key", "label_grounds",
    "ClassMap", "LabelSelection", "Names", "block_split", "check_labels_config", "class_ids", "labelled_pixels",
    "sample_fraction", "sample_images_per_class", "sample_per_class", "select_labels",
]
