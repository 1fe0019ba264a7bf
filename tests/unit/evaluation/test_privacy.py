"""Evaluation data leaves the cluster only scrubbed: the dataset's PII policy applied to every text the
LLM judge receives, checked on what a local chat-completions server actually got."""

import json

import pytest

from kubetune.evaluation.judge import JudgeClient
from kubetune.evaluation.privacy import PiiGuard, Withheld

from .conftest import Reply

# planted PII: each must never reach the judge under redact / reject
EMAIL = "jane.roe@example.org"
PHONE = "+1 (415) 555-0132"
SSN = "SSN 536-22-8726"
CARD = "4111 1111 1111 1111"
PLANTED = [EMAIL, "555-0132", "536-22-8726", "4111 1111 1111 1111"]


def _received(chat_server) -> str:
    return json.dumps([r["body"] for r in chat_server.requests])


def test_redact_scrubs_prompt_reference_and_answer_before_sending(chat_server):
    guard = PiiGuard("redact")
    client = JudgeClient(endpoint=chat_server.url, model="j", scrub=guard, retries=0)
    chat_server.script(Reply(content='{"score": 5}'), Reply(content='{"refusal": false}'))
    prompt = f"I am {EMAIL}, call me at {PHONE}. What is my diagnosis?"
    answer = f"Your card {CARD} and {SSN} say you have the flu."
    assert client.score(prompt, answer, reference=f"write to {EMAIL}") == 5
    assert client.is_refusal(prompt, answer) is False
    sent = _received(chat_server)
    assert len(chat_server.requests) == 2
    assert not [p for p in PLANTED if p in sent], sent
    assert "<EMAIL>" in sent and "<PHONE>" in sent and "<CREDIT_CARD>" in sent and "<SSN>" in sent
    assert "What is my diagnosis?" in sent and "you have the flu" in sent  # the rest is sent as it was
    assert guard.summary()["redacted"] == 5 and guard.summary()["withheld"] == 0
    assert guard.found["EMAIL"] == 3
    assert "redact" in guard.sentence(chat_server.url) and "5 redacted" in guard.sentence(chat_server.url)


def test_reject_sends_nothing_that_holds_pii(chat_server):
    guard = PiiGuard("reject")
    client = JudgeClient(endpoint=chat_server.url, model="j", scrub=guard, retries=0)
    with pytest.raises(Withheld, match="pii: reject"):
        client.score(f"my email is {EMAIL}", "see a doctor")
    with pytest.raises(Withheld):
        client.is_refusal("what do i have?", f"call {PHONE}")
    assert chat_server.requests == []  # nothing left
    assert client.score("what do i have?", "see a doctor") == 7  # clean text still goes
    assert guard.summary()["withheld"] == 2
    assert EMAIL not in str(guard.summary()) and EMAIL not in guard.sentence("x")  # counts, never values


def test_off_sends_as_is_and_says_so(chat_server):
    guard = PiiGuard("off")
    client = JudgeClient(endpoint=chat_server.url, model="j", scrub=guard, retries=0)
    client.score(f"my email is {EMAIL}", "ok")
    assert EMAIL in _received(chat_server)
    assert "unscrubbed" in guard.sentence(chat_server.url)
