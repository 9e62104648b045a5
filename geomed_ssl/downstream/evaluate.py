"""Old path of :func:`geomed_ssl.finetune.evaluate.evaluate_dir` (see :mod:`geomed_ssl.downstream`)."""

from geomed_ssl.finetune.evaluate import evaluate_dir

__all__ = ["evaluate_dir"]
