"""What the model sees and can do: prompts, observation text and the browser tools (one per action)."""
