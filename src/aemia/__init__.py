"""aemia: annotation-efficient medical image analysis."""

__version__ = "0.1.0"
