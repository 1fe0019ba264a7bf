"""The LLM judge against a local chat-completions server (tests/unit/evaluation/conftest.py)."""

import logging
import traceback

import pytest

from kubetune.evaluation.judge import (
    JudgeClient,
    JudgeError,
    JudgeReplyError,
    completions_url,
    parse_refusal,
    parse_score,
)

from .conftest import Reply

SECRET = "sk-test-0123456789abcdef-never-print-me"


@pytest.fixture
def judge(chat_server, monkeypatch):
    monkeypatch.setenv("KT_JUDGE_KEY", SECRET)
    sleeps: list[float] = []
    lines: list[str] = []
    client = JudgeClient(endpoint=chat_server.url, model="judge-1", api_key_env="KT_JUDGE_KEY",
                         rubric="Is the triage advice safe?", timeout=0.5, retries=2, backoff=0.25,
                         sleep=sleeps.append, log=lines.append)
    client.sleeps = sleeps  # type: ignore[attr-defined]
    client.lines = lines  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"score": 7}', 7), ("10", 10), (" 1 ", 1), ('```json\n{"score": 9}\n```', 9), ('{ "score" : 3 }', 3),
])
def test_parse_score_accepts_the_two_documented_forms(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize("reply", [
    "8/10", "Score: 8", "I'd give it an 8", '{"score": 7.5}', '{"score": "7"}', '{"score": true}', '{"score": 11}',
    "0", '{"score": 7, "reason": "ok"}', "[7]", "", "7 8",
])
def test_parse_score_rejects_everything_else(reply):
    with pytest.raises(JudgeReplyError):
        parse_score(reply)


def test_completions_url():
    assert completions_url("https://x/v1/") == "https://x/v1/chat/completions"
    assert completions_url("https://x/v1/chat/completions") == "https://x/v1/chat/completions"


def test_good_score_and_the_request_it_sends(judge, chat_server):
    chat_server.script(Reply(content='{"score": 8}'))
    assert judge.score("What is my diagnosis?", "I can't diagnose; see a GP.", reference="a refusal") == 8
    [request] = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0
    user = body["messages"][1]["content"]
    assert "Is the triage advice safe?" in user and "What is my diagnosis?" in user and "a refusal" in user


def test_malformed_reply_is_rejected_without_retry(judge, chat_server):
    chat_server.script(Reply(content="Great answer! 9/10"))
    with pytest.raises(JudgeReplyError, match="not"):
        judge.score("q", "a")
    assert len(chat_server.requests) == 1


def test_non_chat_completions_body_is_rejected(judge, chat_server):
    chat_server.script(Reply(body='{"result": 7}'))
    with pytest.raises(JudgeReplyError, match="chat completions format"):
        judge.score("q", "a")


def test_5xx_and_429_are_retried_with_backoff(judge, chat_server):
    chat_server.script(Reply(status=503, body="overloaded"), Reply(status=429, body="slow down"), Reply(content="6"))
    assert judge.score("q", "a") == 6
    assert len(chat_server.requests) == 3
    assert judge.sleeps == [0.25, 0.5]
    assert "HTTP 503" in judge.lines[0] and "HTTP 429" in judge.lines[1]


def test_timeouts_are_retried_then_fail(judge, chat_server):
    chat_server.default = Reply(delay=1.5)  # every attempt times out (timeout 0.5 s)
    with pytest.raises(JudgeError, match="failed after 3 attempts"):
        judge.score("q", "a")
    assert len(judge.sleeps) == 2


def test_timeout_then_success(judge, chat_server):
    chat_server.script(Reply(delay=1.5), Reply(content='{"score": 4}'))
    assert judge.score("q", "a") == 4


def test_4xx_is_not_retried(judge, chat_server):
    chat_server.script(Reply(status=401, body='{"error": "invalid key"}'))
    with pytest.raises(JudgeError, match=r"HTTP 401.*check the API key secret"):
        judge.score("q", "a")
    assert len(chat_server.requests) == 1


def test_missing_key_variable_names_the_variable_only(chat_server, monkeypatch):
    monkeypatch.delenv("KT_ABSENT", raising=False)
    client = JudgeClient(endpoint=chat_server.url, model="m", api_key_env="KT_ABSENT")
    with pytest.raises(JudgeError, match="KT_ABSENT is not set"):
        client.score("q", "a")
    assert chat_server.requests == []


def test_the_key_never_appears_in_logs_errors_or_tracebacks(judge, chat_server, caplog):
    # a hostile server echoes the Authorization header back in its error bodies
    chat_server.script(*[Reply(status=500, body=f"bad auth header Bearer {SECRET}")] * 3)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(JudgeError) as info:
        judge.score("q", "a")
    texts = [str(info.value), repr(info.value), repr(judge), *judge.lines, caplog.text]
    assert all(SECRET not in t for t in texts)
    assert "***" in str(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))
    chat_server.script(Reply(status=401, body=SECRET))
    with pytest.raises(JudgeError) as info:
        judge.score("q", "a")
    assert SECRET not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"refusal": true}', True), ('{"refusal": false}', False), ("true", True), (" false\n", False),
    ('```json\n{"refusal": true}\n```', True),
])
def test_parse_refusal_accepts_the_documented_forms(reply, expected):
    assert parse_refusal(reply) is expected


@pytest.mark.parametrize("reply", [
    "yes", "True", '{"refusal": "true"}', '{"refusal": 1}', '{"refused": true}', '{"refusal": true, "why": "x"}',
    "It is a refusal.", "", "[true]", '{"score": 7}',
])
def test_parse_refusal_rejects_everything_else(reply):
    with pytest.raises(JudgeReplyError):
        parse_refusal(reply)


def test_is_refusal_asks_the_classification_question(judge, chat_server):
    chat_server.script(Reply(content='{"refusal": true}'), Reply(content="maybe"))
    assert judge.is_refusal("What is my diagnosis?", "Only a doctor can tell you that.") is True
    body = chat_server.requests[0]["body"]
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert '{"refusal": true}' in system and "What is my diagnosis?" in user and "Only a doctor" in user
    with pytest.raises(JudgeReplyError):  # not retried: one request
        judge.is_refusal("q", "a")
    assert len(chat_server.requests) == 2
