"""The daemon's I/O base: one owner per file descriptor, listening sockets and
their accept loop, fd passing, pty masters, session records and the service
manager's notification socket.

Nothing here knows about sessions or the control protocol; :mod:`consoled.server`
builds on it.
"""
