"""/metrics (issue 13): the families an operator alerts on, named after vLLM's under assistant_,
with values that follow what the server did."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import chat_turn, signup

CONTRACT = ("assistant_num_requests_running", "assistant_num_requests_waiting", "assistant_prompt_tokens",
            "assistant_generation_tokens", "assistant_request_queue_time_seconds", "assistant_time_to_first_token_seconds",
            "assistant_inter_token_latency_seconds", "assistant_adapter_cache_resident", "assistant_adapter_cache_loads",
            "assistant_adapter_cache_evictions")


def _scrape(client) -> dict[str, dict[tuple, float]]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_follow_generation_refusals_and_training(app_factory):
    client = app_factory(max_concurrent_per_user=1, metrics_refresh_s=0)
    before = _scrape(client)
    for name in CONTRACT:  # the contract's names, as exposed (counters with _total, histograms with _count)
        assert any(k == name or k.startswith(name + "_") for k in before), name
    assert "assistant_prompt_tokens_total" in before and "assistant_adapter_cache_loads_total" in before
    assert "process_resident_memory_bytes" in before and before["assistant_refusals_total"][(("reason", "busy"),)] == 0

    u = signup(client, "metered")
    out = chat_turn(client, u["token"], "Count to five.", max_new_tokens=6)
    end = next(iter(out["ends"].values()))
    over = chat_turn(client, u["token"], "Two at once?", alternatives=2, max_new_tokens=2)  # over the per-user cap
    assert over["error"]["code"] == "too_many"
    after = _scrape(client)
    assert after["assistant_generation_tokens_total"][()] - before["assistant_generation_tokens_total"][()] == end["usage"]["completion_tokens"]
    assert after["assistant_prompt_tokens_total"][()] - before["assistant_prompt_tokens_total"][()] == end["usage"]["prompt_tokens"]
    assert after["assistant_time_to_first_token_seconds_count"][()] >= 1
    assert after["assistant_request_queue_time_seconds_count"][()] >= 1
    assert after["assistant_inter_token_latency_seconds_count"][()] >= end["usage"]["completion_tokens"] - 2
    assert (("le", "320.0"),) in after["assistant_time_to_first_token_seconds_bucket"]  # buckets reach minutes
    assert after["assistant_refusals_total"][(("reason", "too_many"),)] == 1
    assert after["assistant_num_requests_running"][()] == 0 and after["assistant_num_requests_waiting"][()] == 0
    assert after["assistant_training_runs"][(("status", "queued"),)] == 0

    from sqlmodel import Session

    from service.models import TrainingRun

    with Session(client.app.state.db) as s:
        s.add(TrainingRun(trigger="manual"))
        s.commit()
    assert _scrape(client)["assistant_training_runs"][(("status", "queued"),)] == 1  # read from the database at scrape time


def test_a_flood_of_scrapes_reads_the_training_tables_once_per_refresh(app_factory):
    """Issue 28, M7: each scrape read every finished training result; now one read per refresh."""
    from sqlalchemy import event
    from sqlmodel import Session

    from service.models import TrainingRun

    client = app_factory(metrics_refresh_s=3600)
    db = client.app.state.db
    reads = []
    event.listen(db, "before_cursor_execute", lambda conn, cursor, statement, *a: reads.append(statement)
                 if "from trainingresult" in statement.lower() else None)
    first = _scrape(client)["assistant_training_runs"][(("status", "queued"),)]
    with Session(db) as s:
        s.add(TrainingRun(trigger="manual"))
        s.commit()
    for _ in range(20):
        assert _scrape(client)["assistant_training_runs"][(("status", "queued"),)] == first  # the cached figure
    assert len(reads) == 1
