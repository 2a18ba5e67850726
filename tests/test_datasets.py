"""Dataset formats: the shipped samples parsed exactly, detection, hf, bad inputs, sha256."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import orjson
import pytest

from inferaudit.errors import ConfigError
from inferaudit.measure.datasets import (
    Conversation,
    Turn,
    dataset_sha256,
    detect_format,
    load_conversations,
)
from inferaudit.measure.protocol import DatasetFormat
from inferaudit.measure.rundir import file_sha256
from inferaudit.measure.samples import (
    SAMPLE_FILES,
    main,
    sample_path,
    write_hf_sample,
    write_samples,
)

PASS = "pass --dataset-format prompts, sharegpt, openai-chat or hf"


def one_line_error(path: Path, fmt: DatasetFormat | None, sha256: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_conversations(path, fmt, sha256)
    text = str(info.value)
    assert "\n" not in text
    return text


def detect_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        detect_format(path)
    text = str(info.value)
    assert "\n" not in text
    return text


# ---- the shipped samples, parsed exactly ----


def test_sharegpt_sample() -> None:
    path = sample_path("sharegpt.json")
    convs = load_conversations(path, "sharegpt")
    assert [len(c.turns) for c in convs] == [1, 2, 4, 3, 1, 2]  # 13 user turns
    assert sum(len(c.turns) for c in convs) == 13
    assert [c.system is not None for c in convs] == [False, False, True, False, False, False]
    assert convs[2].system == (
        "education might would pay may his they result should still both continue"
    )
    assert convs[0] == Conversation(
        (Turn("get kind pay more house good against under never many such?"),)
    )
    assert convs[1].turns[1] == Turn("lot from one guy more how kind what watch month?")
    assert convs[-1].turns[-1].user == "light years car house must car here years work?"
    assert all(t.max_tokens is None for c in convs for t in c.turns)
    # the recorded answers are not turns: the raw file has one gpt value per user turn
    raw = orjson.loads(path.read_bytes())
    answers = [t["value"] for e in raw for t in e["conversations"] if t["from"] == "gpt"]
    assert len(answers) == 13
    assert not {t.user for c in convs for t in c.turns} & set(answers)


def test_chat_sample() -> None:
    convs = load_conversations(sample_path("chat.jsonl"), "openai-chat")
    assert [len(c.turns) for c in convs] == [1, 1, 2, 1, 1, 3]
    assert [tuple(t.max_tokens for t in c.turns) for c in convs] == [
        (64,),
        (None,),
        (None, 32),
        (48,),
        (None,),
        (None, None, None),
    ]
    assert [c.system for c in convs] == [
        None,
        "mother first been create under car being go bring made play back people have",
        None,
        None,
        None,
        None,
    ]
    assert convs[0].turns[0].user == "day about those its reason way watch?"
    # two text parts joined with a newline
    assert convs[3].turns[0].user == (
        "set night not field of same while see\n"
        "with continue from his work country that result make black include"
    )
    # the trailing assistant message of line 5 is dropped
    assert convs[4] == Conversation(
        (Turn("had two just must food small play wait power home by?"),)
    )
    assert convs[5].turns[2].user == (
        "night after war three it as light story father long much to were because understand?"
    )


def test_prompts_sample_in_both_spellings() -> None:
    path = sample_path("prompts.jsonl")
    convs = load_conversations(path, None)
    assert convs == load_conversations(path, "prompts")
    assert [len(c.turns) for c in convs] == [1] * 8
    assert [c.turns[0].max_tokens for c in convs] == [16, None, 32, None, 48, None, 64, None]
    assert convs[0].turns[0].user == (
        "to with stand said is place will some good voice name any or your us month most lose"
    )
    assert all(c.system is None for c in convs)


def test_shipped_samples_are_the_generator_output(tmp_path: Path) -> None:
    paths = write_samples(tmp_path / "gen")
    assert [p.name for p in paths] == list(SAMPLE_FILES)
    for path in paths:
        assert path.read_bytes() == sample_path(path.name).read_bytes(), path.name


def test_samples_main_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / n) for n in SAMPLE_FILES]
    assert (tmp_path / "out" / "chat.jsonl").read_bytes() == sample_path("chat.jsonl").read_bytes()


def test_sample_path_unknown_name() -> None:
    with pytest.raises(ConfigError) as info:
        sample_path("nope.json")
    assert str(info.value).startswith("no sample dataset named 'nope.json' (shipped: ")
    assert "chat.jsonl, " in str(info.value) and "sharegpt.json" in str(info.value)


# ---- detection ----


def test_detect_each_format(tmp_path: Path) -> None:
    assert detect_format(sample_path("sharegpt.json")) == "sharegpt"
    assert detect_format(sample_path("chat.jsonl")) == "openai-chat"
    assert detect_format(sample_path("prompts.jsonl")) == "prompts"
    lines = tmp_path / "sharegpt.jsonl"
    lines.write_text('\n  {"conversations": [{"from": "human", "value": "hi"}]}\n')
    assert detect_format(lines) == "sharegpt"
    spaced = tmp_path / "spaced.json"
    spaced.write_text('\n\t [{"conversations": []}]')
    assert detect_format(spaced) == "sharegpt"
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "state.json").write_text("{}")
    assert detect_format(hf_dir) == "hf"


def test_sharegpt_jsonl_is_read_like_the_array(tmp_path: Path) -> None:
    raw = orjson.loads(sample_path("sharegpt.json").read_bytes())
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in raw) + b"\n")
    assert load_conversations(path, detect_format(path)) == load_conversations(
        sample_path("sharegpt.json"), "sharegpt"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file, cannot tell its format; " + PASS),
        ("\n  \n", "empty file, cannot tell its format; " + PASS),
        ("nope\n", "cannot tell its format (line 1 is not JSON); " + PASS),
        ("\n5\n", "cannot tell its format (line 2 is not a JSON object); " + PASS),
        (
            '{"messages": [], "prompt": "x"}\n',
            "cannot tell its format (line 1 has both 'messages' and 'prompt'); " + PASS,
        ),
        (
            '{"text": "x", "id": 3}\n',
            "cannot tell its format (line 1 has keys 'text', 'id', none of 'conversations', "
            "'messages' or 'prompt'); " + PASS,
        ),
    ],
)
def test_detect_refuses_unknown_or_ambiguous(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    assert detect_error(path) == f"dataset {path}: {message}"


def test_detect_refuses_a_plain_directory_and_a_missing_file(tmp_path: Path) -> None:
    assert detect_error(tmp_path) == (
        f"dataset {tmp_path}: a directory without dataset_info.json, state.json or "
        f"dataset_dict.json (not saved with datasets' save_to_disk); {PASS}"
    )
    assert detect_error(tmp_path / "absent") == f"dataset {tmp_path / 'absent'}: no such file"


# ---- bad inputs: one exact line each ----

SG = "conversations"
BAD_SHAREGPT = [
    (
        [{SG: [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}],
        "conversation 1 (entry 1): conversations[0] must be a user turn "
        "(after an optional system turn)",
    ),
    (
        [
            {SG: [{"from": "human", "value": "a"}]},
            {SG: [{"from": "system", "value": "s"}, {"from": "gpt", "value": "b"}]},
        ],
        "conversation 2 (entry 2): conversations[1] must be a user turn "
        "(after an optional system turn)",
    ),
    (
        [{SG: [{"from": "human", "value": "a"}, {"from": "user", "value": "b"}]}],
        "conversation 1 (entry 1): conversations[1]: two user turns in a row "
        "(no answer between them)",
    ),
    (
        [{SG: [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]}],
        "conversation 1 (entry 1): conversations[1].value must be a non-empty string",
    ),
    (
        [{SG: [{"from": "human", "value": "a"}, {"from": "system", "value": "s"}]}],
        "conversation 1 (entry 1): conversations[1]: a system turn may only come first",
    ),
    (
        [{SG: [{"from": "robot", "value": "a"}]}],
        "conversation 1 (entry 1): conversations[0].from must be human, user, gpt, assistant, "
        "chatgpt, bing, bard or system",
    ),
    ([{SG: []}], "conversation 1 (entry 1): conversations has no user turn"),
    (
        [{SG: [{"from": "system", "value": "s"}]}],
        "conversation 1 (entry 1): conversations has no user turn",
    ),
    (
        [{"id": "x"}],
        'conversation 1 (entry 1): "conversations" must be a list of {"from": str, "value": str}',
    ),
    (
        ["text"],
        'conversation 1 (entry 1): expected an object {"conversations": '
        '[{"from": str, "value": str}, ...]}',
    ),
    ([], "no conversations in it"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_SHAREGPT)
def test_bad_sharegpt(tmp_path: Path, entries: list[object], message: str) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(orjson.dumps(entries))
    assert one_line_error(path, "sharegpt") == f"dataset {path}: {message}"


def test_bad_sharegpt_jsonl_names_conversation_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        '{"conversations": [{"from": "human", "value": "a"}]}\n\n'
        '{"conversations": [{"from": "human", "value": "b"}, {"from": "human", "value": "c"}]}\n'
    )
    assert one_line_error(path, "sharegpt") == (
        f"dataset {path}: conversation 2 (line 3): conversations[1]: two user turns in a row "
        "(no answer between them)"
    )
    path.write_text("[1,\n")
    assert one_line_error(path, "sharegpt").startswith(f"dataset {path}: not JSON (")


def user(text: str) -> dict[str, object]:
    return {"role": "user", "content": text}


BAD_CHAT = [
    (
        {"messages": [user("a"), {"role": "tool", "content": "b"}]},
        "messages[1].role must be system, user or assistant",
    ),
    (
        {"messages": [user("a"), {"role": "assistant", "content": "b"}, {"role": "bot"}]},
        "messages[2].role must be system, user or assistant",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        'messages[0].content[0] must be a text part {"type": "text", "text": str}',
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text must be a string",
    ),
    (
        {"messages": [{"role": "user", "content": ""}]},
        "messages[0].content must be a non-empty string or a list of text parts",
    ),
    (
        {"messages": [{"role": "user", "content": []}]},
        "messages[0].content must be a non-empty string or a list of text parts",
    ),
    (
        {"messages": [{"role": "user", "content": "a", "name": "bob"}]},
        "messages[0]: unknown field 'name'",
    ),
    (
        {"messages": [user("a"), user("b")]},
        "messages[1]: two user turns in a row (no answer between them)",
    ),
    (
        {"messages": [{"role": "assistant", "content": "a"}, user("b")]},
        "messages[0] must be a user turn (after an optional system turn)",
    ),
    (
        {"messages": [user("a"), {"role": "system", "content": "s"}]},
        "messages[1]: a system turn may only come first",
    ),
    ({"messages": [{"role": "system", "content": "s"}]}, "messages has no user turn"),
    ({"messages": [user("a")], "max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"messages": [user("a")], "max_tokens": True}, "max_tokens must be a positive integer"),
    ({"messages": [user("a")], "temperature": 0.5}, "unknown field 'temperature'"),
    ({"messages": "hi"}, 'messages must be a list of {"role": str, "content": str}'),
    ({"prompt": "hi"}, "unknown field 'prompt'"),
]


@pytest.mark.parametrize(("line", "message"), BAD_CHAT)
def test_bad_chat_names_line_and_field(tmp_path: Path, line: object, message: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(orjson.dumps({"messages": [user("fine")]}) + b"\n\n\n" + orjson.dumps(line))
    assert one_line_error(path, "openai-chat") == f"dataset {path}:4: {message}"


def test_bad_chat_lines_that_are_not_objects(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("[]\n")
    assert one_line_error(path, "openai-chat") == (
        f'dataset {path}:1: expected an object {{"messages": [...], "max_tokens": int?}}'
    )
    path.write_text("{nope\n")
    assert one_line_error(path, "openai-chat").startswith(f"dataset {path}:1: not JSON (")
    path.write_text("\n\n")
    assert one_line_error(path, "openai-chat") == f"dataset {path}: no conversations in it"


def test_max_tokens_goes_to_the_last_user_turn_only(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    line = {
        "messages": [
            {"role": "system", "content": "be brief"},
            user("one"),
            {"role": "assistant", "content": "1"},
            {"role": "assistant", "content": "again"},
            user("two"),
            {"role": "assistant", "content": "2"},
        ],
        "max_tokens": 7,
    }
    path.write_bytes(orjson.dumps(line))
    assert load_conversations(path, "openai-chat") == (
        Conversation((Turn("one"), Turn("two", 7)), "be brief"),
    )


def test_file_formats_refuse_a_directory(tmp_path: Path) -> None:
    assert one_line_error(tmp_path, "sharegpt") == (
        f"dataset {tmp_path}: is a directory (a dataset saved with save_to_disk needs "
        "--dataset-format hf)"
    )
    assert one_line_error(tmp_path / "x.json", "sharegpt") == (
        f"dataset {tmp_path / 'x.json'}: no such file"
    )


# ---- v0.1's prompt format: its messages unchanged ----

OLD_BAD = [
    (
        '{"prompt": "a"}\nnot json\n',
        ":2: not JSON (invalid literal, expected 'null': line 1 column 1 (char 0))",
    ),
    ("[1]\n", ':1: expected an object {"prompt": str, "output_tokens": int?}'),
    ('{"prompt": ""}\n', ':1: "prompt" must be a non-empty string'),
    ('{"prompt": 5}\n', ':1: "prompt" must be a non-empty string'),
    ('{"prompt": "a", "output_tokens": 0}\n', ':1: "output_tokens" must be a positive integer'),
    ('{"prompt": "a", "output_tokens": false}\n', ':1: "output_tokens" must be a positive integer'),
    ('{"prompt": "a", "output_tokens": 2.0}\n', ':1: "output_tokens" must be a positive integer'),
    ('\n{"prompt": "a", "zeta": 1, "beta": 2}\n', ":2: unknown field 'beta'"),
    ("\n\n", ": no prompts in it"),
]


@pytest.mark.parametrize(("content", "suffix"), OLD_BAD)
@pytest.mark.parametrize("fmt", [None, "prompts"])
def test_prompts_messages_are_v01s(
    tmp_path: Path, content: str, suffix: str, fmt: DatasetFormat | None
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    message = one_line_error(path, fmt)
    assert message == f"dataset {path}{suffix}"  # v0.1's message, word for word


def test_prompts_missing_file_message_is_v01s(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    assert one_line_error(path, None) == f"dataset {path}: no such file"


# ---- content binding ----


def test_file_sha256_and_mismatch(tmp_path: Path) -> None:
    files: tuple[tuple[str, DatasetFormat], ...] = (
        ("sharegpt.json", "sharegpt"),
        ("chat.jsonl", "openai-chat"),
    )
    for name, fmt in files:
        path = sample_path(name)
        digest = dataset_sha256(path)
        assert digest == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
        assert load_conversations(path, fmt, digest) == load_conversations(path, fmt)
        assert one_line_error(path, fmt, "0" * 64) == (
            f"dataset {path}: content differs from the protocol's dataset_sha256"
        )
    prompts = sample_path("prompts.jsonl")
    assert one_line_error(prompts, None, "0" * 64) == (
        f"dataset {prompts}: content differs from the protocol's dataset_sha256"
    )


def test_directory_sha256_definition(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.arrow").write_bytes(b"xyz")
    (tmp_path / "a.json").write_bytes(b"{}")
    expected = hashlib.sha256(
        b"a.json\0" + hashlib.sha256(b"{}").hexdigest().encode() + b"\n"
        b"b/x.arrow\0" + hashlib.sha256(b"xyz").hexdigest().encode() + b"\n"
    ).hexdigest()
    assert dataset_sha256(tmp_path) == expected
    (tmp_path / "b" / "x.arrow").write_bytes(b"xyZ")
    assert dataset_sha256(tmp_path) != expected


# ---- Hugging Face datasets saved to disk ----


def test_hf_sharegpt_sample(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    directory = write_hf_sample(tmp_path / "hf")
    assert detect_format(directory) == "hf"
    convs = load_conversations(directory, "hf", dataset_sha256(directory))
    assert convs == load_conversations(sample_path("sharegpt.json"), "sharegpt")
    assert sum(len(c.turns) for c in convs) == 13
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert one_line_error(directory, "hf", "f" * 64) == (
        f"dataset {directory}: content differs from the protocol's dataset_sha256"
    )


def test_hf_chat_and_prompt_columns_with_nulls(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    chat = datasets.Dataset.from_list(
        [
            {
                "id": 1,
                "messages": [user("a"), {"role": "assistant", "content": "b"}, user("c")],
                "max_tokens": 9,
            },
            {"id": 2, "messages": [{"role": "system", "content": "s"}, user("d")]},
        ]
    )
    chat.save_to_disk(str(tmp_path / "chat"))
    assert load_conversations(tmp_path / "chat", "hf") == (
        Conversation((Turn("a"), Turn("c", 9))),
        Conversation((Turn("d"),), "s"),
    )
    prompts = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(
                [{"prompt": "p", "output_tokens": 3}, {"prompt": "q"}]
            ),
            "test": datasets.Dataset.from_list([{"prompt": "z"}]),
        }
    )
    prompts.save_to_disk(str(tmp_path / "prompts"))
    assert detect_format(tmp_path / "prompts") == "hf"
    assert load_conversations(tmp_path / "prompts", "hf") == (
        Conversation((Turn("p", 3),)),
        Conversation((Turn("q"),)),
    )


def test_hf_bad_inputs(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    bad_row = datasets.Dataset.from_list(
        [
            {"conversations": [{"from": "human", "value": "a"}]},
            {"conversations": [{"from": "gpt", "value": "a"}]},
        ]
    )
    bad_row.save_to_disk(str(tmp_path / "row"))
    assert one_line_error(tmp_path / "row", "hf") == (
        f"dataset {tmp_path / 'row'}: row 1: conversations[0] must be a user turn "
        "(after an optional system turn)"
    )
    datasets.Dataset.from_list([{"text": "x"}]).save_to_disk(str(tmp_path / "cols"))
    assert one_line_error(tmp_path / "cols", "hf") == (
        f"dataset {tmp_path / 'cols'}: needs exactly one of the columns 'conversations', "
        "'messages' or 'prompt' (it has 'text')"
    )
    datasets.Dataset.from_list([{"prompt": ""}]).save_to_disk(str(tmp_path / "empty"))
    assert one_line_error(tmp_path / "empty", "hf") == (
        f'dataset {tmp_path / "empty"}: row 0: "prompt" must be a non-empty string'
    )
    splits = datasets.DatasetDict(
        {
            "a": datasets.Dataset.from_list([{"prompt": "x"}]),
            "b": datasets.Dataset.from_list([{"prompt": "y"}]),
        }
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    assert one_line_error(tmp_path / "splits", "hf") == (
        f"dataset {tmp_path / 'splits'}: a DatasetDict with splits 'a', 'b' and no 'train': "
        "save_to_disk the split to use"
    )
    no_rows = datasets.Dataset.from_list([{"prompt": "x"}]).filter(lambda row: False)
    no_rows.save_to_disk(str(tmp_path / "none"))
    assert one_line_error(tmp_path / "none", "hf") == (
        f"dataset {tmp_path / 'none'}: no rows in it"
    )
    (tmp_path / "plain").mkdir()
    assert one_line_error(tmp_path / "plain", "hf").startswith(
        f"dataset {tmp_path / 'plain'}: cannot load it with datasets ("
    )
    assert one_line_error(tmp_path / "absent", "hf") == (
        f"dataset {tmp_path / 'absent'}: no such directory (the hf format is a directory "
        "written by save_to_disk)"
    )


def test_hf_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert one_line_error(tmp_path, "hf") == (
        f"dataset {tmp_path}: reading a Hugging Face dataset: needs the hf extra: "
        "pip install 'inferaudit[hf]'"
    )
