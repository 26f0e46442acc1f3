"""devenv: the whole multi-service system on your machine with one command."""

__version__ = "0.1.0"
