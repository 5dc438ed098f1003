"""Detach-key parsing (docker's syntax) and matching, as pure logic.

The matcher never eats a key that turns out not to be part of the detach
sequence, and never holds a prefix back for longer than ``wait`` seconds: a
lone ctrl-p (previous line in shells and editors) reaches the container
after that wait even if no other key follows.
"""

from __future__ import annotations

from typing import Final

#: docker and podman's default: ctrl-p then ctrl-q.
DEFAULT_DETACH_KEYS: Final = "ctrl-p,ctrl-q"
#: Seconds a typed prefix of the detach sequence is held back.
DEFAULT_WAIT: Final = 0.5

_CTRL_SPECIAL: Final = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


class DetachKeysError(ValueError):
    pass


def parse_detach_keys(spec: str) -> bytes:
    """Parse docker's ``--detach-keys`` syntax.

    Keys are ``ctrl-<value>`` or single characters, separated by commas.

    Returns:
        The byte sequence; empty when ``spec`` is empty (detaching disabled).

    Raises:
        DetachKeysError: a key is not understood; the message names it.
    """
    if spec == "":
        return b""
    out = bytearray()
    for key in spec.split(","):
        if len(key) == 1 and key.isascii():
            out.append(ord(key))
            continue
        if key.startswith("ctrl-") and len(key) == 6:
            value = key[5]
            if value.isascii() and value.isalpha():
                out.append(ord(value.lower()) - ord("a") + 1)
                continue
            if value in _CTRL_SPECIAL:
                out.append(_CTRL_SPECIAL[value])
                continue
        raise DetachKeysError(
            f"invalid detach key {key!r} in {spec!r}: use a single character or "
            "ctrl-<a-z, @, [, \\, ], ^, _>, separated by commas (e.g. ctrl-p,ctrl-q)"
        )
    return bytes(out)


def _key_names(keys: bytes) -> list[str]:
    names = []
    for b in keys:
        if 1 <= b <= 26:
            names.append(f"ctrl-{chr(b + 96)}")
        elif b in _CTRL_SPECIAL.values():
            names.append("ctrl-" + next(k for k, v in _CTRL_SPECIAL.items() if v == b))
        else:
            names.append(chr(b))
    return names


def describe(keys: bytes) -> str:
    """Human form of a key sequence: ``ctrl-p ctrl-q``."""
    return " ".join(_key_names(keys))


def key_spec(keys: bytes) -> str:
    """The ``--detach-keys`` form of a key sequence (docker's syntax): ``ctrl-p,ctrl-q``."""
    return ",".join(_key_names(keys))


class DetachMatcher:
    """Finds the detach sequence in typed input.

    Args:
        keys: the sequence (empty: never detach).
        wait: seconds a matching prefix is held back before it is passed on.
    """

    def __init__(self, keys: bytes, wait: float = DEFAULT_WAIT) -> None:
        self.keys = keys
        self.wait = wait
        self._held = b""
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the held prefix must be released, or None if nothing is held."""
        return self._deadline

    def feed(self, data: bytes, now: float) -> tuple[bytes, bool]:
        """Process typed bytes.

        Returns:
            ``(to_forward, detached)``; after a detach, bytes typed after the
            sequence are dropped.
        """
        keys = self.keys
        if not keys:
            return data, False
        out = bytearray()
        buf = self._held
        for i in range(len(data)):
            buf += data[i : i + 1]
            while buf and not keys.startswith(buf):
                out += buf[:1]
                buf = buf[1:]
            if buf == keys:
                self._held = b""
                self._deadline = None
                return bytes(out), True
        if buf and not self._held:
            self._deadline = now + self.wait
        elif not buf:
            self._deadline = None
        self._held = buf
        return bytes(out), False

    def flush(self) -> bytes:
        """Release the held prefix (its wait is over)."""
        held, self._held, self._deadline = self._held, b"", None
        return held
