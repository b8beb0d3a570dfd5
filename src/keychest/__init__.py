"""keychest: TLS certificate monitoring that any server joins with nothing but bash."""

__version__ = "0.1.0"
