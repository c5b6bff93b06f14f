"""vaelab: from a folder of figure photos to trained, compared and sampled VAEs."""

__version__ = "0.1.0"
