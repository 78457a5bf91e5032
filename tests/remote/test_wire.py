"""The wire pieces of the remote package, imported directly: frames, bodies, parameters, execs."""

from __future__ import annotations

import gzip
import io
import signal

import pytest

from buildbot_farm.remote.bodies import ChunkedStream, GunzipReader, RequestBody
from buildbot_farm.remote.errors import AgentError, ArchiveError, flag, parse_mode, single
from buildbot_farm.remote.execs import ExecResult, expand_path
from buildbot_farm.remote.files import go_mode_string
from buildbot_farm.remote.protocol import ExitStatus, FrameDecoder, FrameError, frame
from buildbot_farm.remote.runs import OutputSpool


def test_frames_the_agent_writes_are_what_the_master_decodes() -> None:
    """Output frames and the final status survive any split of the byte stream."""
    stream = (frame(b"o", b"hello ") + frame(b"o", b"world")
              + frame(b"x", ExecResult.from_returncode(-signal.SIGTERM).to_json()))
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        output = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert b"".join(output) == b"hello world"
        assert decoder.finish() == ExitStatus(None, "SIGTERM", "signal: SIGTERM")


def test_a_stream_cut_before_its_status_is_an_error() -> None:
    """Output without the final frame means the buildlet went away: FrameError, not success."""
    decoder = FrameDecoder()
    decoder.feed(frame(b"o", b"partial"))
    with pytest.raises(FrameError, match="ended before its exit status"):
        decoder.finish()
    with pytest.raises(FrameError, match="unknown frame type"):
        FrameDecoder().feed(frame(b"?", b""))


def test_a_chunked_body_reads_across_chunks_and_skips_trailers() -> None:
    """Chunked framing is undone, and the trailer lines after the last chunk are consumed."""
    raw = io.BytesIO(b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT")
    body = RequestBody(raw, "chunked", None)
    assert body.read() == b"abcde"
    assert body.finished
    assert raw.read() == b"NEXT"


def test_a_sized_body_that_ends_early_is_a_400() -> None:
    """A Content-Length longer than what comes is the client's mistake, said as such."""
    body = RequestBody(io.BytesIO(b"abc"), "", "10")
    with pytest.raises(AgentError, match="ended early") as cut:
        body.read()
    assert cut.value.status == 400


def test_a_body_longer_than_the_limit_is_a_413() -> None:
    """read_limited refuses a body over its limit."""
    with pytest.raises(AgentError) as refused:
        RequestBody(io.BytesIO(b"x" * 20), "", "20").read_limited(10)
    assert refused.value.status == 413


def test_gunzip_reads_concatenated_members_and_refuses_a_truncated_one() -> None:
    """Two gzip members read as one stream; a stream cut short is an ArchiveError."""
    data = gzip.compress(b"one ") + gzip.compress(b"two")
    assert GunzipReader(io.BytesIO(data)).read() == b"one two"
    with pytest.raises(ArchiveError, match="truncated"):
        GunzipReader(io.BytesIO(data[:-4])).read()


def test_chunked_output_ends_with_its_trailers() -> None:
    """A streamed answer is chunks, then the zero chunk with the trailer fields."""
    out = io.BytesIO()
    stream = ChunkedStream(out)
    stream.write(b"hi")
    stream.finish({"Process-State": "ok"})
    assert out.getvalue() == b"2\r\nhi\r\n0\r\nProcess-State: ok\r\n\r\n"


def test_parameters_are_given_once_and_well_formed() -> None:
    """single, flag and parse_mode give 400s that name the parameter."""
    assert single({"a": ["1"]}, "a") == "1"
    with pytest.raises(AgentError, match="given 2 times"):
        single({"a": ["1", "2"]}, "a")
    assert flag({"recursive": ["true"]}, "recursive") is True
    with pytest.raises(AgentError, match="must be 1 or 0"):
        flag({"recursive": ["yes"]}, "recursive")
    assert parse_mode("420") == 0o644
    with pytest.raises(AgentError, match="decimal permission"):
        parse_mode("0o644")


def test_exec_results_and_the_path_field() -> None:
    """Return codes read as Go's states; the path field expands $PATH, $WORKDIR and $EMPTY."""
    assert ExecResult.from_returncode(0).state == "ok"
    assert ExecResult.from_returncode(3).state == "exit status 3"
    assert ExecResult.from_returncode(-9).signal_name == "SIGKILL"
    assert expand_path(["$WORKDIR/bin", "$PATH", "$EMPTY"], "/usr/bin", "/w") == "/w/bin:/usr/bin"


def test_mode_strings_are_gos() -> None:
    """Directory, link and permission letters are written as Go's FileMode.String does."""
    assert go_mode_string(0o040755) == "drwxr-xr-x"
    assert go_mode_string(0o120777) == "Lrwxrwxrwx"
    assert go_mode_string(0o100644) == "-rw-r--r--"


def test_the_spool_keeps_the_latest_bytes_as_a_ring() -> None:
    """Past its cap the spool drops the oldest bytes and reads the kept ones in order."""
    spool = OutputSpool(8)
    try:
        spool.append(b"abcdef")
        spool.append(b"ghijk")
        assert (spool.start, spool.size) == (3, 11)
        kept = b""
        while spool.start + len(kept) < spool.size:
            kept += spool.read(spool.start + len(kept), 100)
        assert kept == b"defghijk"
    finally:
        spool.close()
