"""Pictures of models and data: false-colour views, MAE reconstruction previews, CLS attention maps. Below train/,
which draws them during pretraining; the ``attention`` command draws them for any encoder and file."""
