"""The DFGN trainer: dual masks (`trainer.masks`) so far; model, curriculum, DeepSpeed engine and sampling to come."""
