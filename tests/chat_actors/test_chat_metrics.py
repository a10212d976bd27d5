"""What the chat side's events are counted as: upstream failure kinds from the errors
``UpstreamClient`` raises (each met through the real client and the mock upstream), and answer
end reasons from their last frames."""

from __future__ import annotations

import httpx
import pytest
import trio

from chat_actors import frames
from chat_actors.chat_metrics import answer_reason, upstream_error_kind
from chat_actors.upstream import ChatRequest, open_upstream
from core.errors import UpstreamError
from core.settings import Settings, load_settings
from scripts.mock_upstream import serve_mock_upstream


async def failure(settings: Settings, text: str) -> tuple[UpstreamError, BaseException | None]:
    async with open_upstream(settings) as upstream:
        request = ChatRequest("mock-gpt", [{"role": "user", "content": text}])
        with pytest.raises(UpstreamError) as caught:
            await upstream.complete(request)
    return caught.value, caught.value.__cause__


@pytest.mark.parametrize(("fault", "kind"), [
    ("500", "status_5xx"),
    ("429", "status_429"),
    ("stall_first", "timeout"),
])
async def test_kinds_of_the_mock_upstreams_faults(nursery: trio.Nursery, fault: str,
                                                  kind: str) -> None:
    port = await nursery.start(serve_mock_upstream, "127.0.0.1", 0)
    settings = load_settings(api_env="test", openai_base_url=f"http://127.0.0.1:{port}/v1",
                             upstream_retries=0, upstream_first_byte_timeout=0.3)
    error, cause = await failure(settings, f"x [mock fault={fault} retry_after=0 stall_s=5]")
    assert upstream_error_kind(error, cause) == kind


async def test_a_refused_connection_is_a_connection_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(api_env="test", openai_base_url=f"http://127.0.0.1:{port}/v1",
                             upstream_retries=0)
    error, cause = await failure(settings, "hello")
    assert isinstance(cause, httpx.ConnectError)
    assert upstream_error_kind(error, cause) == "connection"


def test_kinds_without_a_cause() -> None:
    assert upstream_error_kind(UpstreamError("upstream answered 404: no such model"),
                               None) == "status_4xx"
    assert upstream_error_kind(UpstreamError("upstream stream ended before finishing"),
                               None) == "incomplete"


def test_answer_reasons() -> None:
    end = frames.terminator_frame("0")
    assert answer_reason(end, complete=True, store=True) == "complete"
    assert answer_reason(end, complete=False, store=True) == "stopped"
    assert answer_reason(end, complete=False, store=False) == "room_deleted"
    cut = frames.error_frame("0", "session_stopped", "stopped")
    assert answer_reason(cut, complete=False, store=True) == "session_stopped"
