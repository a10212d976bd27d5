"""Optional translation of user messages, off unless ``TRANSLATOR_URL`` is set.

The translator is reached over HTTP with the LibreTranslate API (self-hostable):
``POST {TRANSLATOR_URL}`` with ``{"q", "source": "auto", "target": "en", "format": "text"}``
answers ``{"translatedText": "..."}``. A message sent with ``"translate": true`` is translated to
English before it reaches the session (so a slow translator never holds up the session's
mailbox, e.g. a ``/stop`` from another socket); the socket is told the translation. When the
translator is off or fails, the socket gets ``translation_unavailable`` and the message goes on
untranslated: nothing is lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from chat_actors import frames
from core.settings import Settings

TARGET_LANGUAGE = "en"


@dataclass(frozen=True)
class Translation:
    text: str  # what goes to the session: the translation, or the original on failure
    notice: frames.Frame  # for the sending socket: the translation, or why there is none


class Translator:
    def __init__(self, url: str | None, client: httpx.AsyncClient | None) -> None:
        self._url = url
        self._client = client

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Translator]:
        if not settings.translator_url:
            yield cls(None, None)
            return
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)) as client:
            yield cls(settings.translator_url, client)

    async def translate(self, room: str, text: str) -> Translation:
        if self._url is None or self._client is None:
            return Translation(text, frames.error_frame(
                room, "translation_unavailable",
                "Translation is not configured on this server; the message was sent as is."))
        try:
            response = await self._client.post(self._url, json={
                "q": text, "source": "auto", "target": TARGET_LANGUAGE, "format": "text"})
            response.raise_for_status()
            translated = response.json()["translatedText"]
            if not isinstance(translated, str) or not translated:
                raise ValueError("no translatedText")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return Translation(text, frames.error_frame(
                room, "translation_unavailable",
                "The translator failed; the message was sent as is.", type(exc).__name__))
        return Translation(translated, frames.reply_frame(room, f"Translated: {translated}"))
