"""Memory planning: will a model fit a device, in which artifact format, and what to change
when it does not - from config.json alone, before anything is exported or downloaded.

model.py reads the config (and tokenizer, when a directory is given), weights.py sizes each
target's artifact tensor by tensor, kv.py sizes the runtime's KV cache and buffers, memory.py
makes the verdict and the suggestions, devices.py reads devices.toml (device profiles).
"""

from edgeport.core.errors import EdgeportError


class PlanError(EdgeportError):
    """A plan that cannot be made: unknown device, unreadable config, a target that cannot take the model."""
