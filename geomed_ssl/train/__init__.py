"""Training: the Lightning module, callbacks and the pretrain entry point."""
