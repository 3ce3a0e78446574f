"""streamfleet workers: the shared stream runtime, one subpackage per worker, and the CLI."""

__version__ = "0.1.0"
