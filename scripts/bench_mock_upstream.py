"""How much load the mock upstream sustains (it must never be a load test's bottleneck).

Starts the mock in a subprocess (its CPU time is read from /proc), opens ``--streams``
concurrent keep-alive connections that each stream ``--answers`` answers, checks every answer
whole against ``expected_answer``, and prints answers/s, chunks/s, time to first content chunk,
and the mock's CPU cost per chunk and per answer (the robust number on shared cores).

    python -m scripts.bench_mock_upstream --streams 1000 --answers 2 --tokens 64 --delay-ms 10
    python -m scripts.bench_mock_upstream --via-client   # the same through chat_actors.upstream

The raw load generator uses plain Trio sockets (no httpx) so that it costs less than the mock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import trio

from scripts.mock_upstream import expected_answer

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _messages(stream: int, answer: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"bench {stream}/{answer}"}]


def _contents(raw: bytes) -> str:
    """The answer text in a raw chunked SSE body (each chunk holds whole events)."""
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            out.append(delta.get("content") or "")
    return "".join(out)


async def _raw_stream(port: int, index: int, args: argparse.Namespace,
                      ttft: list[float], bad: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for answer in range(args.answers):
            messages = _messages(index, answer)
            body = json.dumps({"model": "mock-gpt", "stream": True, "messages": messages}).encode()
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            start = time.perf_counter()
            await stream.send_all(head.encode() + body)
            raw, first = b"", True
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("mock closed the connection")
                raw += data
                if first and b'{"content":' in raw:
                    ttft.append(time.perf_counter() - start)
                    first = False
            if args.verify and _contents(raw) != expected_answer(messages, args.tokens):
                bad.append(index)


class _FirstDelta:
    """A send_delta that records the time to the first delta."""

    def __init__(self, ttft: list[float]) -> None:
        self.ttft, self.start, self.first = ttft, time.perf_counter(), True

    async def __call__(self, _: str) -> None:
        if self.first:
            self.ttft.append(time.perf_counter() - self.start)
            self.first = False


async def _client_stream(upstream: object, index: int, args: argparse.Namespace,
                         ttft: list[float], bad: list[int]) -> None:
    from chat_actors.upstream import ChatRequest, UpstreamClient

    assert isinstance(upstream, UpstreamClient)
    for answer in range(args.answers):
        messages = _messages(index, answer)
        send = _FirstDelta(ttft)
        info = await upstream.stream(ChatRequest("mock-gpt", messages), send)
        if args.verify and info.text != expected_answer(messages, args.tokens):
            bad.append(index)


async def _run(args: argparse.Namespace, port: int) -> tuple[list[float], list[int]]:
    ttft: list[float] = []
    bad: list[int] = []
    if args.via_client:
        from chat_actors.upstream import open_upstream
        from core.settings import load_settings

        settings = load_settings(api_env="test", openai_base_url=f"http://127.0.0.1:{port}/v1",
                                 upstream_first_byte_timeout=120, upstream_chunk_gap_timeout=120)
        async with open_upstream(settings) as upstream, trio.open_nursery() as nursery:
            for i in range(args.streams):
                nursery.start_soon(_client_stream, upstream, i, args, ttft, bad)
    else:
        async with trio.open_nursery() as nursery:
            for i in range(args.streams):
                nursery.start_soon(_raw_stream, port, i, args, ttft, bad)
    return ttft, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--answers", type=int, default=2, help="answers per stream")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--workers", type=int, default=1, help="mock processes")
    parser.add_argument("--via-client", action="store_true")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    args = parser.parse_args()
    mock = subprocess.Popen(
        [sys.executable, "-m", "scripts.mock_upstream", "--port", str(args.port),
         "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms),
         "--workers", str(args.workers)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        cpu0, wall0, own0 = _cpu_seconds(mock.pid), time.perf_counter(), time.process_time()
        ttft, bad = trio.run(_run, args, args.port)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds(mock.pid) - cpu0
        own = time.process_time() - own0
    finally:
        mock.terminate()
        mock.wait()
    answers = args.streams * args.answers
    chunks = answers * args.tokens
    ttft.sort()
    ideal = args.answers * args.tokens * args.delay_ms / 1000
    print(f"{'client' if args.via_client else 'raw'}: {args.streams} streams x {args.answers} "
          f"answers x {args.tokens} tokens, {args.delay_ms} ms/token (ideal {ideal:.2f} s)")
    print(f"  wall {wall:.2f} s, {answers / wall:.0f} answers/s, {chunks / wall:.0f} chunks/s, "
          f"wrong answers: {len(bad)}")
    print(f"  first content chunk: p50 {statistics.median(ttft) * 1000:.0f} ms, "
          f"p99 {ttft[int(len(ttft) * 0.99)] * 1000:.0f} ms")
    if args.workers == 1:
        print(f"  mock CPU {cpu:.2f} s ({cpu / wall * 100:.0f}% of a core): "
              f"{cpu / chunks * 1e6:.1f} us/chunk, {cpu / answers * 1e3:.2f} ms/answer")
    print(f"  load generator CPU {own:.2f} s ({own / wall * 100:.0f}% of a core)")


if __name__ == "__main__":
    main()
