"""devenv: the whole multi-service system on your machine with one command."""

__version__ = "0.1.0"

from devenv import native

native.install()  # the hot path's modules compiled (mypyc), when a build matches them
