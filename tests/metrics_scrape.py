"""Reading ``GET /metrics`` the way Prometheus does: the text format, parsed by
prometheus-client's own parser, as ``{(sample name, labels): value}``."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

TOKEN = "metrics-scraper-token-0123456789"


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is not there (a counter never touched)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` that carry ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls)}


async def scrape(url: str, token: str = TOKEN) -> Samples:
    """One scrape on a fresh connection (with several workers, any of them may answer)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def scrape_until(url: str, check: Callable[[Samples], bool], timeout: float = 5.0,
                       token: str = TOKEN) -> Samples:
    """Scrape until ``check`` holds (live gauges of other workers are sampled every second)."""
    with trio.move_on_after(timeout):
        while True:
            samples = await scrape(url, token)
            if check(samples):
                return samples
            await trio.sleep(0.1)
    return samples
