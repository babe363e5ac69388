"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("assistant_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.tokens = Counter("assistant_tokens_generated", "Tokens generated and streamed", registry=r)
        self.generations = Counter("assistant_generations", "Finished generations", ["finish_reason"], registry=r)
        self.latency = Histogram(
            "assistant_generation_seconds", "Time from enqueue to the end of a generation", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
        )
        self.ttft = Histogram(
            "assistant_time_to_first_token_seconds", "Time from enqueue to the first token", registry=r,
            buckets=(0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
        )
        self.feedback = Counter("assistant_feedback", "Feedback saved", ["rating"], registry=r)
        self.rankings = Counter("assistant_rankings", "Rankings saved", registry=r)
        self.ws_connections = Gauge("assistant_websocket_connections", "Open chat sockets", registry=r)
