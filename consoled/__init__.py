"""consoled: a console-socket broker daemon for Linux containers."""

__version__ = "0.1.0"
