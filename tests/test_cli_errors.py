"""The CLI's one error boundary (``inferaudit.cli.main``): one line, never wrapped, exit 2."""

from __future__ import annotations

import errno

import pytest

import inferaudit.cli as cli
from inferaudit.errors import ConfigError, DataError, InferauditError, RecordError


def run_main(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    def app() -> None:
        raise exc

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    code = stopped.value.code
    assert isinstance(code, int)
    return code


def test_a_long_error_is_one_line_at_any_width(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    where = "/tmp/" + "x" * 150 + "/bad.jsonl"
    code = run_main(monkeypatch, ConfigError(f"{where}: 1 bad record(s); nothing imported [a-z]"))
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"error: {where}: 1 bad record(s); nothing imported [a-z]\n"


def test_an_os_error_on_a_path_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/run.json/records.jsonl")
    assert run_main(monkeypatch, exc) == 2
    assert capsys.readouterr().err == "error: /tmp/run.json/records.jsonl: Not a directory\n"
    exc2 = FileExistsError(errno.EEXIST, "File exists", "/a", None, "/b")  # as os.rename
    assert run_main(monkeypatch, exc2) == 2
    assert capsys.readouterr().err == "error: /a -> /b: File exists\n"


def test_an_os_error_without_a_path_is_a_bug_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def app() -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(OSError, match="Input/output error"):
        cli.main()


def test_a_closed_stdout_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(monkeypatch, BrokenPipeError(errno.EPIPE, "Broken pipe")) == 141


def test_the_error_taxonomy() -> None:
    """One root; data and record errors are not configuration errors (a caller that catches
    ``ConfigError`` for a bad flag does not swallow a corrupt file)."""
    assert issubclass(RecordError, DataError) and issubclass(DataError, InferauditError)
    assert not issubclass(DataError, ConfigError) and not issubclass(ConfigError, DataError)
    assert RecordError("record 3: chunk times go backwards").diagnostics() == (
        "record 3: chunk times go backwards"
    )
