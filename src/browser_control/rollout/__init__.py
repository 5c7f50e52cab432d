"""One episode as TRL's ``environment_factory`` sees it: the browser environment class (one tool per action,
over HTTP to the environment service), the prompts and observation text, and concurrent rollouts inside
GRPOTrainer. Training, evaluation and SFT demonstrations all play episodes through it, so they agree."""
