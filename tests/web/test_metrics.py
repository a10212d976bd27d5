"""``GET /metrics`` on a whole server: only the operator's bearer token opens it, and during a
short load its counters move by exactly what the load did."""

from __future__ import annotations

import httpx

from core.settings import Settings
from tests.chat_server import chat_socket, running_server
from tests.metrics_scrape import TOKEN, Samples, scrape, scrape_until, total, value


async def test_only_the_metrics_token_opens_metrics(db_settings: Settings,
                                                    redis_actor: object) -> None:
    async with running_server(db_settings) as server, \
            httpx.AsyncClient(base_url=server.url) as http:  # no METRICS_TOKEN: metrics off
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer"}):
            response = await http.get("/metrics", headers=headers)
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "not_found"  # as for a path the server lacks
    async with running_server(db_settings, metrics_token=TOKEN) as server:
        user = await server.new_user()
        async with httpx.AsyncClient(base_url=server.url) as http:
            refused = [
                await http.get("/metrics"),
                await http.get("/metrics", headers={"Authorization": "Bearer " + "x" * len(TOKEN)}),
                await http.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[:-1]}),
                await http.get("/metrics", headers={"Authorization": "Bearer " + TOKEN + "x"}),
                await http.get("/metrics", headers={"Authorization": "Basic " + TOKEN}),
                await http.get("/metrics", headers={"Authorization": "Bearer"}),
                await http.get("/metrics", headers={"Authorization": user.jwt}),  # a sign-in
            ]
            http.cookies.set("Authorization", user.jwt)  # the chat page's sign-in cookie
            refused.append(await http.get("/metrics"))
            http.cookies.clear()
            for response in refused:
                assert response.status_code == 401, response.text
                assert response.json()["code"] == "not_authenticated"
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "chat_" not in response.text
            response = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "# TYPE chat_answers_started_total counter" in response.text
            assert TOKEN not in response.text
            lower = await http.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
            assert lower.status_code == 200  # the scheme is case-insensitive (RFC 9110)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def delta_total(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


async def test_metrics_count_exactly_what_a_short_load_did(db_settings: Settings,
                                                          redis_actor: object) -> None:
    """Three sockets of one user (the message limit on: 4 a minute): a complete answer, a
    long one stopped with /stop, a [mock fault=500] (one retry: two failed attempts), one more
    complete answer, then a fifth message the limit refuses."""
    async with running_server(db_settings, metrics_token=TOKEN, chat_messages_per_minute=4,
                              upstream_retries=1) as server:
        user = await server.new_user()
        before = await scrape(server.url)
        async with (chat_socket(server, user.access_key, room="a") as a,
                    chat_socket(server, user.access_key, room="b") as b,
                    chat_socket(server, user.access_key, room="c") as c):
            await b.send("long [mock tokens=400 delay_ms=20]")
            assert (await b.frame())["finish"] is False  # streaming
            await a.send("hello")
            assert "error" not in (await a.answer())[1]
            await c.send("fails [mock fault=500]")
            assert (await c.answer())[1]["error"]["code"] == "upstream_error"

            during = await scrape_until(server.url, lambda s: delta(
                s, before, "chat_sockets_open") == 3)
            assert delta(during, before, "chat_sockets_open") == 3
            assert delta(during, before, "chat_sessions_live") == 3
            assert delta(during, before, "chat_answers_started_total") == 3
            assert delta(during, before, "chat_answers_finished_total", reason="complete") == 1
            assert delta_total(during, before, "chat_answers_finished_total") == 2  # b streams

            await b.send("/stop")
            assert "error" not in (await b.answer())[1]
            await a.send("again")
            assert "error" not in (await a.answer())[1]
            await a.send("one too many")
            assert (await a.answer())[1]["error"]["code"] == "rate_limited"

        after = await scrape_until(server.url, lambda s: delta(s, before, "chat_sockets_open") == 0)
        assert delta(after, before, "chat_sockets_open") == 0
        assert delta(after, before, "chat_sessions_live") == 3  # idle sessions stay a while
        assert delta(after, before, "chat_answers_started_total") == 4
        finished = {reason: delta(after, before, "chat_answers_finished_total", reason=reason)
                    for reason in ("complete", "stopped", "upstream_error")}
        assert finished == {"complete": 2, "stopped": 1, "upstream_error": 1}
        assert delta_total(after, before, "chat_answers_finished_total") == 4
        assert delta(after, before, "chat_answer_duration_seconds_count") == 4
        assert delta(after, before, "chat_answer_first_delta_seconds_count") == 3  # not c's
        assert delta(after, before, "chat_upstream_errors_total", kind="status_5xx") == 2
        assert delta_total(after, before, "chat_upstream_errors_total") == 2
        assert delta(after, before, "chat_limit_refusals_total", limit="rate_limited") == 1
        assert delta_total(after, before, "chat_limit_refusals_total") == 1
        assert delta_total(after, before, "chat_storage_seconds_count", store="redis") > 0
        assert delta(after, before, "chat_storage_seconds_count", store="redis",
                     op="batch") > 0  # the context store's loads and changes: batched scripts
        assert delta_total(after, before, "chat_storage_seconds_count", store="sql") > 0
        assert ("chat_forwarded_messages_total", frozenset()) in after
        assert value(after, "chat_forwarded_messages_total") == 0
        assert value(after, "process_resident_memory_bytes") > 0  # the process basics
        first_delta_sum = delta(after, before, "chat_answer_first_delta_seconds_sum")
        duration_sum = delta(after, before, "chat_answer_duration_seconds_sum")
        assert 0 < first_delta_sum < duration_sum
