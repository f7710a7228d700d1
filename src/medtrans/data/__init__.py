"""Data: layouts (find subjects on disk), phantom, plan, normalise, prepared cache, samplers, splits."""
