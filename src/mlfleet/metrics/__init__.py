"""Per-minute traffic figures of tracking servers and endpoints, for the console's charts."""

from mlfleet.metrics.recorder import MINUTES, MinuteFigures, Recorder

__all__ = ["MINUTES", "MinuteFigures", "Recorder"]
