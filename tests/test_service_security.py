"""The log service's security rules, against a real `inferaudit serve` on 127.0.0.1: no write
without a token of the right scope (401/403), body limits (413, also for a chunked body), a rate
limit per token (429), tokens never stored nor logged, only envelopes of registered auditor keys
with well-formed statements accepted (422), and a world-readable log key refused at start."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conftest_ledger import make_run_dir
from inferaudit.seal.evidence import canonical, sign_envelope
from inferaudit.seal.keys import Signer, key_id
from inferaudit.seal.ledger.store import DEFAULT_LOG_NAME, open_ledger
from test_service import AUDITOR, OTHER, Served, prepare, run_envelope, serve

ENVELOPE_LIMIT = 256 * 1024
BUNDLE_LIMIT = 60_000
BURST = 25
THIRD = Signer(name="auditor-c", seed=bytes(range(3, 35)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service for the module (SQLite), with a small bundle limit and a small burst that
    refills slowly (0.01 requests/s: each token has about BURST requests in all)."""
    base = tmp_path_factory.mktemp("security")
    db = f"sqlite:///{base / 'service.sqlite3'}"
    tokens = prepare(db)
    limits = ("--max-bundle-bytes", str(BUNDLE_LIMIT), "--burst", str(BURST), "--rate", "0.01")
    with serve(base / "service", db, *limits) as s:
        s.tokens = tokens
        yield s


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferaudit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _new_token(served: Served, name: str, *scopes: str) -> str:
    with served.client(served.tokens["admin"]) as c:
        answer = c.post("/api/v1/tokens", json={"name": name, "scopes": list(scopes)})
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    assert isinstance(token, str) and token.startswith("iat_")
    return token


WRITES = [
    ("POST", "/api/v1/evidence", "submit-evidence"),
    ("PUT", "/api/v1/runs/0/bundle", "submit-evidence"),
    ("POST", "/api/v1/claims", "submit-claims"),
    ("POST", "/api/v1/auditors", "admin"),
    ("POST", "/api/v1/tokens", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scope"), WRITES)
def test_every_write_needs_a_valid_token_of_its_scope(
    served: Served, method: str, path: str, scope: str
) -> None:
    body = b'{"a": 1}'
    with served.client() as c:
        for headers in (
            {},
            {"Authorization": "Bearer iat_" + "A" * 43},
            {"Authorization": f"Basic {served.tokens[scope]}"},
            {"Authorization": "Bearer"},
        ):
            answer = c.request(method, path, content=body, headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json() == {"error": "a valid bearer token is required"}
            assert answer.headers["www-authenticate"] == "Bearer"
        for other in ("submit-evidence", "submit-claims", "admin"):
            if other == scope:
                continue
            answer = c.request(
                method,
                path,
                content=body,
                headers={"Authorization": f"Bearer {served.tokens[other]}"},
            )
            assert answer.status_code == 403, other
            assert answer.json() == {"error": f"this token lacks the {scope} scope"}
            assert served.tokens[other] not in answer.text


def test_a_revoked_token_allows_nothing(served: Served) -> None:
    token = _new_token(served, "to-revoke", "submit-evidence")
    with served.client(token) as c:
        assert c.post("/api/v1/evidence", content=b"{}").status_code == 422
    done = _cli(
        "log", "token", "revoke", "to-revoke", "--db", served.db, "--data-dir", str(served.data_dir)
    )
    assert done.returncode == 0, done.stderr
    with served.client(token) as c:
        assert c.post("/api/v1/evidence", content=b"{}").status_code == 401


def test_bodies_over_the_limit_are_refused_413(served: Served, tmp_path: Path) -> None:
    token = _new_token(served, "big-bodies", "submit-evidence")
    with served.client(token) as c:
        over = c.post("/api/v1/evidence", content=b"x" * (ENVELOPE_LIMIT + 1))
        assert over.status_code == 413
        assert over.json() == {"error": f"request body over the limit of {ENVELOPE_LIMIT:,} bytes"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while reading
            for _ in range(ENVELOPE_LIMIT // 4096 + 2):
                yield b"y" * 4096

        chunked = c.post("/api/v1/evidence", content=chunks())
        assert chunked.status_code == 413
        assert chunked.json() == over.json()
        at_limit = c.post("/api/v1/evidence", content=b"z" * ENVELOPE_LIMIT)  # read, then refused
        assert at_limit.status_code == 422
        assert at_limit.json() == {"error": "envelope is not JSON"}
        # a bundle has its own limit (--max-bundle-bytes)
        envelope = run_envelope(make_run_dir(tmp_path / "r1"))
        index = c.post("/api/v1/evidence", content=envelope).json()["index"]
        big = c.put(
            f"/api/v1/runs/{index}/bundle",
            content=b"\x1f\x8b" + b"0" * BUNDLE_LIMIT,
            headers={"Content-Type": "application/gzip"},
        )
        assert big.status_code == 413
        assert big.json() == {"error": f"request body over the limit of {BUNDLE_LIMIT:,} bytes"}
        small = c.put(f"/api/v1/runs/{index}/bundle", content=b"\x1f\x8b" + b"0" * 100,
                      headers={"Content-Type": "application/gzip"})  # fmt: skip
        assert small.status_code == 422
        assert small.json()["error"].startswith("bundle")
        plain = c.put(f"/api/v1/runs/{index}/bundle", content=b"x",
                      headers={"Content-Type": "text/plain"})  # fmt: skip
        assert plain.status_code == 415
        beyond = c.put("/api/v1/runs/999/bundle", content=b"x",
                       headers={"Content-Type": "application/gzip"})  # fmt: skip
        assert beyond.status_code == 404


def test_a_token_is_rate_limited_after_its_burst(served: Served) -> None:
    token = _new_token(served, "hasty", "submit-evidence")
    with served.client(token) as c:
        statuses = [c.post("/api/v1/evidence", content=b"{}").status_code for _ in range(BURST)]
        assert statuses == [422] * BURST
        limited = c.post("/api/v1/evidence", content=b"{}")
    assert limited.status_code == 429
    assert limited.json() == {"error": "too many requests for this token; slow down"}
    other = _new_token(served, "patient", "submit-evidence")  # buckets are per token
    with served.client(other) as c:
        assert c.post("/api/v1/evidence", content=b"{}").status_code == 422


def test_tokens_are_stored_hashed_and_never_logged(served: Served) -> None:
    token = _new_token(served, "secret-one", "submit-claims")
    with served.client(token) as c:
        assert c.post("/api/v1/claims", content=b"{}").status_code == 422
    duplicate = served.client(served.tokens["admin"]).post(
        "/api/v1/tokens", json={"name": "secret-one", "scopes": ["admin"]}
    )
    assert duplicate.status_code == 422
    assert duplicate.json() == {"error": "a token named 'secret-one' exists already"}
    db_file = Path(served.db.removeprefix("sqlite:///"))
    stored = b"".join(
        p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.is_file()
    )
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored
    output = served.output()
    for t in [token, *served.tokens.values()]:
        assert t.encode() not in stored
        assert t not in output
    assert "POST /api/v1/claims" in output  # the access log is on; it shows no header
    assert "Bearer" not in output and "uthorization" not in output


def _envelope(payload: bytes, signer: Signer = AUDITOR) -> bytes:
    return canonical(sign_envelope(payload, signer))


def test_only_registered_auditors_and_well_formed_statements_are_accepted(
    served: Served, tmp_path: Path
) -> None:
    run = make_run_dir(tmp_path / "r1", n=10)
    good = orjson.loads(run_envelope(run))
    statement = orjson.loads(base64.b64decode(good["payload"]))
    bad_sig = dict(
        good,
        signatures=[{"keyid": AUDITOR.keyid, "sig": good["signatures"][0]["sig"][:-4] + "AAA="}],
    )
    wrong_subjects = dict(statement, subject=[statement["subject"][0]])
    bad_spec = dict(statement, predicate=dict(statement["predicate"], spec={"endpoint": 3}))
    cases = {
        "envelope signature: unknown key (auditor-b+": run_envelope(run, OTHER),
        "envelope signature: invalid signature by auditor-a+": orjson.dumps(bad_sig),
        "envelope is not JSON": b"not json",
        "envelope must hold exactly payload, payloadType, signatures": b'{"payload": "e30="}',
        "statement: the payload is not JSON": _envelope(b"garbage statement"),
        "statement: must hold exactly _type, subject, predicateType, predicate": _envelope(
            b'{"hello":1}'
        ),
        "statement: not RFC 8785 canonical JSON": _envelope(
            orjson.dumps(statement, option=orjson.OPT_INDENT_2)
        ),
        "statement: subjects are not a v2 run's evidence (missing spec.json": _envelope(
            canonical(wrong_subjects)
        ),
        "statement: predicate spec: endpoint:": _envelope(canonical(bad_spec)),
    }
    before = _size(served)
    with served.client(served.tokens["submit-evidence"]) as c:
        for expected, body in cases.items():
            answer = c.post("/api/v1/evidence", content=body)
            assert answer.status_code == 422, (expected, answer.text)
            assert answer.json()["error"].startswith(expected), answer.json()
    assert _size(served) == before  # nothing refused was logged
    # registering a key over the API makes its envelopes acceptable
    with served.client(served.tokens["admin"]) as c:
        added = c.post("/api/v1/auditors", json={"key": THIRD.verifier().text()})
        again = c.post("/api/v1/auditors", json={"key": THIRD.verifier().text()})
        cosig = c.post("/api/v1/auditors", json={"key": _cosignature_key_text()})
        extra = c.post("/api/v1/auditors", json={"key": THIRD.verifier().text(), "x": 1})
    assert added.json() == {"keyid": THIRD.keyid, "key": THIRD.verifier().text(), "added": True}
    assert again.json()["added"] is False
    assert cosig.status_code == 422
    assert "a cosignature key cannot sign evidence" in cosig.json()["error"]
    assert extra.status_code == 422
    with served.client(served.tokens["submit-evidence"]) as c:
        accepted = c.post("/api/v1/evidence", content=run_envelope(run, THIRD))
    assert accepted.status_code == 200


def _size(served: Served) -> int:
    with served.client() as c:
        return int(c.get("/checkpoint").text.split("\n")[1])


def _cosignature_key_text() -> str:
    public = Signer(name="w", seed=bytes(32)).public
    raw = base64.b64encode(bytes([4]) + public).decode()
    return f"w+{key_id('w', 4, public):08x}+{raw}"


def test_no_docs_and_security_headers_on_every_answer(served: Served) -> None:
    with served.client() as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code == 404
        answer = c.get("/checkpoint")
        missing = c.get("/no/such/page")
    for a in (answer, missing):
        assert a.headers["content-security-policy"] == (
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
        )
        assert a.headers["x-content-type-options"] == "nosniff"
        assert a.headers["referrer-policy"] == "no-referrer"
    assert missing.json() == {"error": "Not Found"}
    assert "server" not in answer.headers


def test_log_token_and_auditor_commands(served: Served, tmp_path: Path) -> None:
    where = ("--db", served.db, "--data-dir", str(served.data_dir))
    made = _cli(
        "log", "token", "add", "cli-made", "--scope", "admin", "--scope", "submit-claims", *where
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("iat_")
    listed = _cli("log", "token", "list", *where)
    line = next(x for x in listed.stdout.splitlines() if x.startswith("cli-made\t"))
    assert line.split("\t")[1:2] == ["submit-claims,admin"] and line.endswith("\t-")
    assert token not in listed.stdout and token not in listed.stderr
    with served.client(token) as c:
        assert (
            c.post("/api/v1/tokens", json={"name": "by-cli", "scopes": ["admin"]}).status_code
            == 200
        )
    bad = _cli("log", "token", "add", "cli-bad", "--scope", "root", *where)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: scope 'root': expected one of submit-evidence, submit-claims, admin"
    ]
    key_file = tmp_path / "auditor.pub"
    key_file.write_text(THIRD.verifier().text() + "\n")
    added = _cli("log", "auditor", "add", str(key_file), *where)
    assert added.returncode == 0, added.stderr
    shown = _cli("log", "auditor", "list", *where)
    assert AUDITOR.verifier().text() in shown.stdout.splitlines()
    assert THIRD.verifier().text() in shown.stdout.splitlines()


def test_a_world_readable_log_key_is_refused_before_listening(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_ledger(f"sqlite:///{home / 'ledger.sqlite3'}", home) as ledger:
        ledger.sign_checkpoint()
    key_file = home / "keys" / f"{DEFAULT_LOG_NAME}.key"
    key_file.chmod(0o644)
    done = _cli("serve", "--data-dir", str(home), "--port", "0")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: key file {key_file} is readable by others (mode 0644); chmod 600 {key_file}"
    ]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o644  # reported, never changed
