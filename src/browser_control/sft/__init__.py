"""Supervised warm start: scripted demonstrations (``demos``) and fine-tuning on them (``sft``)."""
