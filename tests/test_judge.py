"""The judge client against a local OpenAI-compatible server that injects 429s, 500s, slow replies and
unparsable replies (tools.fault_server): scores come through, failures are counted, nothing raises."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from longalign.judge import judge, make_client, parse_score
from longalign.scriptargs import UserError
from tools.fault_server import FaultServer, marker


@pytest.fixture()
def server():
    # slow replies (2.5 s) outlast the client timeout used below (0.5 s), so a slow reply is a timeout.
    with FaultServer(slow_s=2.5, retry_after_ms=10) as srv:
        yield srv


@pytest.fixture()
def client(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    return make_client(server.base_url, timeout=0.5, max_retries=4)


def test_parse_score_takes_the_last_rating():
    assert parse_score("format: [[rating]], e.g. [[5]]. My rating: [[8]]") == 8
    assert parse_score("Rating: [[7.5]]") == 7.5
    assert parse_score("[[ 9/10 ]]") == 9
    assert parse_score("[[8]] ... on reflection [[3]]") == 3
    # the last [[...]] that HOLDS a rating (FastChat reads these two as 7 too): a quoted format after the rating,
    # and a trailing dot
    assert parse_score("Rating: [[7]]. I gave it in the format [[rating]].") == 7
    assert parse_score("Rating: [[7.]]") == 7
    assert parse_score("[[6]] then [[n/a]]") == 6 and parse_score("[[8]] or was it [[11]]") == 8
    # unusable: none, not a number, out of the 1-10 scale
    for reply in (None, "", "no rating", "[[rating]]", "[[0]]", "[[11]]", "[[.5]]", "[[7..]]", "[7]"):
        assert parse_score(reply) is None, reply


def test_429_then_500_then_500_still_scores(server, client):
    j = judge(client, "gpt-4", "Q " + marker(1, 7, ("429", "500", "500")))
    assert (j.score, j.failure, j.asks) == (7.0, None, 1)
    assert server.requests["case=1"] == 4 and server.served["429"] == 1 and server.served["500"] == 2
    assert j.system_fingerprint == "fp_fault_server"


def test_slow_reply_times_out_and_is_retried(server, client):
    j = judge(client, "gpt-4", "Q " + marker(2, 4, ("slow",)))
    assert j.score == 4 and server.requests["case=2"] == 2
    assert 0.5 <= j.seconds < 2.0  # gave up on the slow reply at the timeout (+ backoff), did not wait for it


def test_unparsable_replies_are_asked_again(server, client):
    j = judge(client, "gpt-4", "Q " + marker(3, 6, ("garbage", "garbage")))
    assert (j.score, j.asks) == (6, 3)


def test_never_parsable_is_a_counted_failure_not_a_crash(server, client):
    j = judge(client, "gpt-4", "Q " + marker(4, None), max_reasks=5)
    assert j.score is None and j.asks == 6 and "no [[rating]]" in j.failure
    assert server.requests["case=4"] == 6


def test_retries_exhausted_is_a_failure(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    # Negative control for the retry test above: with no retries the same 429 is fatal (and recorded).
    j = judge(make_client(server.base_url, timeout=0.5, max_retries=0), "gpt-4", "Q " + marker(5, 7, ("429",)))
    assert j.score is None and "RateLimitError" in j.failure


def test_faults_under_concurrency(server, client):
    faults = [("429", "500", "500"), ("500", "slow"), ("garbage", "429"), ()]
    prompts = [f"Q{i} " + marker(i, i % 10 + 1, faults[i % 4]) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda p: judge(client, "gpt-4", p).score, prompts))
    assert got == [i % 10 + 1 for i in range(12)]


def test_key_only_from_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        make_client("http://127.0.0.1:9/v1")
