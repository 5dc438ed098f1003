"""journald's native protocol: when stderr is the journal, and what an entry holds.

Entries are parsed as journald parses them (tests/support/journal.py).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consoled.server import journal
from consoled.server.journal import stream_is_journal
from tests.support.journal import parse_entry

# --- detection and encoding, without sockets ------------------------------------------------


def test_stream_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    r, w = os.pipe()
    other = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        st = os.fstat(w)
        assert stream_is_journal(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(other, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        for value in ("", ":", "junk", f"{st.st_dev}", f"{st.st_dev}:{st.st_ino}:0",
                      f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev + 1}:{st.st_ino}"):  # fmt: skip
            assert not stream_is_journal(w, {"JOURNAL_STREAM": value}), value
        assert not stream_is_journal(w, {})
    finally:
        for fd in (r, w, other):
            os.close(fd)
    assert not stream_is_journal(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})  # closed


def test_entry_fields() -> None:
    traceback = "Traceback (most recent call last):\n  ...\nValueError: x\n"
    event = {
        "event": "intake.rejected",
        "level": "warning",
        "session": "web1",
        "count": 3,
        "forced": True,
        "path": None,
        "exception": traceback,
        # Not sent as fields: ours, journald's own, or not valid names.
        "message": "not the MESSAGE",
        "priority": 0,
        "_pid": 1,
        "9lives": "x",
        "bad-key": "x",
        "k" * 65: "x",
        "é": "x",
    }
    raw = journal.entry(event, message='{"event": "intake.rejected"}')
    fields = parse_entry(raw)
    assert fields == {
        "MESSAGE": b'{"event": "intake.rejected"}',
        "PRIORITY": b"4",
        "SYSLOG_IDENTIFIER": b"consoled",
        "EVENT": b"intake.rejected",
        "LEVEL": b"warning",
        "SESSION": b"web1",
        "COUNT": b"3",
        "FORCED": b"true",
        "PATH": b"null",
        "EXCEPTION": traceback.encode(),
    }
    # A value with a newline goes in the binary-safe form.
    value = traceback.encode()
    assert b"EXCEPTION\n" + struct.pack("<Q", len(value)) + value + b"\n" in raw
    assert b"SESSION=web1\n" in raw


@pytest.mark.parametrize(
    ("level", "priority"),
    [("critical", 2), ("error", 3), ("exception", 3), ("warning", 4), ("info", 6),
     ("debug", 7), ("unheard-of", 6), (None, 6)],
)  # fmt: skip
def test_priority_from_level(level: str | None, priority: int) -> None:
    fields = parse_entry(journal.entry({"event": "e", "level": level}, "m"))
    assert fields["PRIORITY"] == str(priority).encode()


field_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda k: k.upper() not in {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"}
)


@given(fields=st.dictionaries(field_names, st.text()), message=st.text())
def test_any_text_round_trips(fields: dict[str, str], message: str) -> None:
    parsed = parse_entry(journal.entry(fields, message))
    expected = {k.upper(): v.encode("utf-8", "backslashreplace") for k, v in fields.items()}
    assert parsed == {
        "MESSAGE": message.encode("utf-8", "backslashreplace"),
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"consoled",
        **expected,
    }
