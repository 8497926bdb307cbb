"""fleetchat: serve chat LLMs, from a laptop to a fleet of GPU workers."""

__version__ = "0.1.0"
