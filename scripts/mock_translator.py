"""A local translator speaking the LibreTranslate API, for tests and local runs.

``POST /translate {"q", "source", "target", "format"}`` → ``{"translatedText": "[en] <q>"}``;
a text containing ``[fail]`` answers 500. Run: ``python -m scripts.mock_translator --port 8002``
and set ``TRANSLATOR_URL=http://127.0.0.1:8002/translate``.
"""

from __future__ import annotations

import argparse
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio


def create_translator() -> QuartTrio:
    app = QuartTrio("mock_translator")

    @app.post("/translate")
    async def translate() -> tuple[dict[str, str], int]:
        body = await request.get_json(force=True, silent=True) or {}
        text = body.get("q")
        if not isinstance(text, str):
            return {"error": "q is required"}, 400
        if "[fail]" in text:
            return {"error": "translator failure"}, 500
        return {"translatedText": f"[{body.get('target', 'en')}] {text}"}, 200

    return app


async def serve_mock_translator(
    host: str = "127.0.0.1", port: int = 0,
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` reports the real port."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, create_translator(), config, mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    trio.run(partial(serve_mock_translator, args.host, args.port))


if __name__ == "__main__":
    main()
