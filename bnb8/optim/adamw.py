"""bitsandbytes' module path ``bitsandbytes.optim.adamw``: the AdamW classes (defined in ``adam``)."""

from bnb8.optim.adam import AdamW, AdamW8bit, AdamW32bit, PagedAdamW, PagedAdamW8bit, PagedAdamW32bit

__all__ = ["AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit"]
