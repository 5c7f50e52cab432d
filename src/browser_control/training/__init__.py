"""GRPO training of the browser agent with TRL's GRPOTrainer and the browser environment service."""
