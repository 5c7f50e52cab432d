"""browser-control: teach small language models to operate a web browser with reinforcement learning."""

__version__ = "0.1.0"
