"""The stream relay passes whole SSE events on and holds the rest until it is whole."""

from __future__ import annotations

from gateway.streaming import _whole_frames


def test_whole_events_pass_and_the_rest_waits() -> None:
    assert _whole_frames(b"data: 1\n\ndata: 2\n\n") == (b"data: 1\n\ndata: 2\n\n", b"")
    assert _whole_frames(b"data: 1\n\ndata: 2") == (b"data: 1\n\n", b"data: 2")
    assert _whole_frames(b"data: 1\r\n\r\ndata: 2") == (b"data: 1\r\n\r\n", b"data: 2")


def test_a_piece_without_an_event_boundary_is_held_whole() -> None:
    # Not even its first bytes go out: an error frame after them would make one undecodable line ("datdata: ...").
    assert _whole_frames(b'data: {"id": 1, "choi') == (b"", b'data: {"id": 1, "choi')
    assert _whole_frames(b"") == (b"", b"")
