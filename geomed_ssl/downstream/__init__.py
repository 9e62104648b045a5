"""The Python paths that docs before the split of ``downstream/`` showed, kept working as re-exports.

``downstream/`` held fine-tuning, prediction, embeddings and attention maps together; they now live in
:mod:`geomed_ssl.finetune`, :mod:`geomed_ssl.inference`, :mod:`geomed_ssl.embeddings` and :mod:`geomed_ssl.viz`.
Only the documented entry points are here; import from the new packages in new code.
"""

import warnings

warnings.warn("geomed_ssl.downstream is the old home of the fine-tuning, embedding and attention functions; import "
              "them from geomed_ssl.finetune, geomed_ssl.embeddings or geomed_ssl.viz.", DeprecationWarning,
              stacklevel=2)
