"""Pure, batched, device-agnostic tensor functions used by the pretext tasks.

Nothing in this package imports Lightning, Hydra or config objects, so every transform can be
tested, benchmarked and reused on its own.
"""
