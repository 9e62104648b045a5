"""Fine-tuning with few labels: label files, few-label sampling, training windows, segmentation and classification
runs, evaluation and its metrics."""
