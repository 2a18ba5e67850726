"""The twin's truth file shows what it received: chat messages, roles, prompt hashes and the
truth-side prefix-cache view (``twin/prefix.py``), against real twin processes on 127.0.0.1.

Prompts are built from the twin's own vocabulary so that their token counts (whitespace words)
are known exactly; prefix lengths are multiples of the 16-token block.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferaudit.twin import text
from inferaudit.twin.launch import start_twin
from inferaudit.twin.options import TwinOptions
from inferaudit.twin.prefix import BLOCK_TOKENS, PrefixView, chain_hashes
from test_twin import MODEL, Reply, call, read_truth

WORDS = text.VOCABULARY


def words(start: int, count: int) -> str:
    """``count`` distinct vocabulary words from index ``start`` (one twin token each)."""
    return " ".join(WORDS[start : start + count])


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def post_all(
    options: TwinOptions, requests: list[tuple[str, dict[str, Any]]]
) -> tuple[list[Reply], list[dict[str, Any]]]:
    """Send ``requests`` one after another to a twin child process; the replies and truth."""
    assert options.truth is not None
    with start_twin(options) as twin:

        async def go() -> list[Reply]:
            async with aiohttp.ClientSession() as session:
                return [await call(session, twin.base_url, p, b) for p, b in requests]

        replies = asyncio.run(go())
    return replies, read_truth(options.truth)


def completion(prompt: str, **params: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True, "seed": 1}
    return "/completions", body | params


def chat(messages: list[dict[str, Any]], **params: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "ignore_eos": True}
    return "/chat/completions", body | {"seed": 1} | params


def options(tmp_path: Path, *behave: str) -> TwinOptions:
    truth = tmp_path / f"truth-{'-'.join(behave) or 'honest'}.jsonl"
    return TwinOptions(ttft_ms=1, tpot_ms=1, model=MODEL, truth=truth, behave=behave)


SHARED = words(0, 64)  # a 64-token "system prompt": 4 whole blocks
TAILS = [words(100 + 20 * i, 20) for i in range(4)]  # 20 tokens each: 1 block + 4 loose tokens


@pytest.mark.parametrize("behave", [(), ("prefix-cache",)])
def test_four_prompts_sharing_a_64_token_prefix(tmp_path: Path, behave: tuple[str, ...]) -> None:
    prompts = [f"{SHARED} {tail}" for tail in TAILS]
    requests = [completion(p) for p in prompts]
    requests.append(completion(prompts[0]))  # the first prompt again: 5 whole blocks seen
    replies, lines = post_all(options(tmp_path, *behave), requests)
    assert [r.status for r in replies] == [200] * 5
    assert [line["prefix_hit_tokens"] for line in lines] == [0, 64, 64, 64, 80]
    assert [line["prompt_tokens"] for line in lines] == [84] * 5
    assert [line["prompt_sha256"] for line in lines] == [sha(p) for p in prompts + prompts[:1]]
    assert all(line["messages"] == 0 and line["roles"] == [] for line in lines)
    assert all(line["last_user_sha256"] is None for line in lines)
    if behave:  # the prefix-cache behaviour (16-word blocks) serves exactly the same hits
        assert [line["cached_prompt_tokens"] for line in lines] == [0, 64, 64, 64, 80]
        assert [line["behaviours"] for line in lines] == [[]] + [["prefix-cache"]] * 4
    else:  # the view is truth-side only: an honest twin caches nothing
        assert all(line["cached_prompt_tokens"] == 0 for line in lines)
        assert all(line["behaviours"] == [] for line in lines)
    # unchanged keys keep their values
    assert [r.usage() for r in replies] == [
        {"prompt_tokens": 84, "completion_tokens": 4, "total_tokens": 88}
    ] * 5
    assert all(line["tokens_generated"] == line["tokens_reported"] == 4 for line in lines)
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]


def test_multi_turn_chat_messages_roles_and_shared_history(tmp_path: Path) -> None:
    system, user1, user2 = words(0, 32), words(200, 16), words(300, 8)
    turn1: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": user1},
    ]
    opts = options(tmp_path)
    assert opts.truth is not None
    with start_twin(opts) as twin:

        async def go() -> tuple[Reply, Reply, Reply]:
            async with aiohttp.ClientSession() as session:
                first = await call(session, twin.base_url, *chat(turn1))
                reply = first.text()
                turn2: list[dict[str, Any]] = [
                    *turn1,
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": [{"type": "text", "text": user2}]},
                ]
                second = await call(session, twin.base_url, *chat(turn2))
                three: list[dict[str, Any]] = [
                    {"role": "system", "content": system},
                    {"role": "assistant", "content": None},  # e.g. only a tool call
                    {"role": "user", "content": user2},
                ]
                third = await call(session, twin.base_url, *chat(three, stream=True))
                return first, second, third

        first, second, third = asyncio.run(go())
    a, b, c = read_truth(opts.truth)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    reply = first.text().strip()
    assert len(reply.split()) == 16
    # (1) the first turn: 48 tokens, 3 whole blocks, none seen before
    assert (a["messages"], a["roles"], a["prompt_tokens"]) == (2, ["system", "user"], 48)
    assert a["prompt_sha256"] == sha(f"{system}\n{user1}")
    assert a["last_user_sha256"] == sha(user1)
    assert a["prefix_hit_tokens"] == 0
    # (2) the second turn repeats the first (its 3 blocks hit), the assistant's reply and a new
    # user message are new: 32 + 16 + 16 + 8 = 72 tokens, every message counted
    assert b["messages"] == 4
    assert b["roles"] == ["system", "user", "assistant", "user"]
    assert b["prompt_tokens"] == 72
    assert second.usage() == {"prompt_tokens": 72, "completion_tokens": 16, "total_tokens": 88}
    assert b["prompt_sha256"] == sha(f"{system}\n{user1}\n{first.text()}\n{user2}")
    assert b["last_user_sha256"] == sha(user2)
    assert b["prefix_hit_tokens"] == 48
    # (3) three messages, one without content: the system prompt's 2 blocks hit
    assert (c["messages"], c["roles"]) == (3, ["system", "assistant", "user"])
    assert c["prompt_tokens"] == 40 and c["stream"] is True
    assert c["prompt_sha256"] == sha(f"{system}\n{user2}")
    assert c["last_user_sha256"] == sha(user2)
    assert c["prefix_hit_tokens"] == 32


def test_chat_shares_blocks_with_completions_and_refused_requests_do_not_count(
    tmp_path: Path,
) -> None:
    prompt = f"{SHARED} {TAILS[0]}"
    requests = [
        completion(prompt, max_tokens=10**6),  # 400: over the context length, not counted
        chat([{"role": "system", "content": SHARED}, {"role": "user", "content": TAILS[0]}]),
        completion(prompt),  # the twin renders no template: the same 84 tokens, 5 blocks
        chat([{"role": "assistant", "content": "hello"}]),  # no user message
    ]
    replies, lines = post_all(options(tmp_path), requests)
    assert [r.status for r in replies] == [400, 200, 200, 200]
    refused, system_chat, again, no_user = lines
    assert refused["error"] is not None and refused["prompt_tokens"] == 0
    assert (refused["messages"], refused["roles"], refused["prefix_hit_tokens"]) == (0, [], 0)
    assert refused["prompt_sha256"] is None and refused["last_user_sha256"] is None
    assert system_chat["prefix_hit_tokens"] == 0
    assert system_chat["last_user_sha256"] == sha(TAILS[0])
    assert again["prefix_hit_tokens"] == 80
    assert (no_user["messages"], no_user["roles"]) == (1, ["assistant"])
    assert no_user["last_user_sha256"] is None and no_user["prompt_sha256"] == sha("hello")
    assert no_user["prefix_hit_tokens"] == 0 and no_user["prompt_tokens"] == 1


def test_chain_hashes_known_answer() -> None:
    tokens = [f"w{i}" for i in range(2 * BLOCK_TOKENS + 5)]
    h1 = hashlib.sha256(bytes(32) + " ".join(tokens[:16]).encode()).digest()
    h2 = hashlib.sha256(h1 + " ".join(tokens[16:32]).encode()).digest()
    assert chain_hashes(tokens) == [h1, h2]  # the 5 loose tokens are never hashed
    assert chain_hashes(tokens[:15]) == []
    # a block's hash names the whole prefix: the same block after another one hashes otherwise
    assert chain_hashes(tokens[16:32])[0] != h2


def test_prefix_view_first_come_first_served_and_its_cap() -> None:
    a = " ".join(f"a{i}" for i in range(48))
    b = " ".join(f"a{i}" for i in range(16)) + " " + " ".join(f"b{i}" for i in range(32))
    view = PrefixView()
    assert [view.observe(a), view.observe(a), view.observe(b), view.observe(b)] == [0, 48, 16, 48]
    assert len(view) == 5
    capped = PrefixView(max_hashes=2)
    assert [capped.observe(a), capped.observe(a)] == [0, 32]  # the 3rd block was never kept
    assert [capped.observe(b), capped.observe(b), len(capped)] == [16, 16, 2]
