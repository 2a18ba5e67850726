"""inferaudit: verify the inference capacity you were promised."""

__version__ = "0.1.0"
