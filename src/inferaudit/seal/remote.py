"""A remote transparency log (``inferaudit serve``): submit envelopes, upload run bundles.

``RemoteLog(url, token)`` speaks the service's API over HTTP(S) (httpx, with timeouts). Every
failure is a ``RemoteLogError`` of one line naming the URL and the HTTP status with the
service's own ``{"error"}`` line; the token goes only into the ``Authorization`` header, never
into an error, a log line or a ``repr``.

What the service answers is checked before it is believed: a submission's tlog-proof must be
for the index it names, its checkpoint signed by the log key it names (whose name is the
checkpoint's origin), and its inclusion proof must lead from the envelope's own leaf hash to
that checkpoint's root.

``seal_run_remote(run_dir, signer, remote)`` is ``seal.publish.seal_run`` with the remote log in
place of the local ledger: the statement is signed here, the envelope is submitted, and
``statement.json``, ``envelope.dsse.json`` and ``entry.tlog-proof`` (against the remote
checkpoint, with its witness cosignatures) are written exactly as a local seal writes them.

Tokens for the CLI (``read_token``): the environment variable ``INFERAUDIT_TOKEN`` or a token
file that only its owner may read (``chmod 600``), never a command-line value.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from inferaudit.errors import ConfigError, LedgerError
from inferaudit.measure.rundir import ENVELOPE_FILE, PROOF_FILE, STATEMENT_FILE
from inferaudit.seal.evidence import build_statement, envelope_leaf, parse_envelope
from inferaudit.seal.keys import KeyFormatError, Signer, Verifier, parse_verifier
from inferaudit.seal.ledger import merkle
from inferaudit.seal.ledger.note import (
    NoteError,
    open_checkpoint,
    parse_checkpoint,
    parse_tlog_proof,
    split_note,
)
from inferaudit.seal.publish import publish

TOKEN_ENV = "INFERAUDIT_TOKEN"
MAX_ANSWER_BYTES = 4 << 20
_TOKEN = re.compile(r"[!-~]{1,200}")  # printable ASCII, no spaces: a safe header value
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*){0,3}")


class RemoteLogError(LedgerError):
    """The remote log refused a request, could not be reached, or answered something wrong."""


@dataclass(frozen=True)
class RemoteReceipt:
    """A submission the remote log accepted, its answer checked (module docstring)."""

    index: int
    origin: str
    log_key: Verifier
    checkpoint: str
    proof_text: str


@dataclass(frozen=True)
class BundleReceipt:
    index: int
    status: str  # "verified" | "unverified"
    reason: str | None


@dataclass(frozen=True)
class ClaimReceipt:
    index: int
    claim_id: str
    proof_text: str


def read_token(token_file: Path | None) -> str:
    """The bearer token: from ``token_file`` (owner-only mode required), else the environment."""
    if token_file is not None:
        try:
            fd = os.open(token_file, os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError(f"token file {token_file}: no such file") from None
        except PermissionError:
            raise ConfigError(f"token file {token_file}: permission denied") from None
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"token file {token_file} is readable by others (mode {mode:04o}); "
                    f"chmod 600 {token_file}"
                )
            token = fh.read(1024).strip()
        where = f"token file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
        if not token:
            raise ConfigError(f"no token: set {TOKEN_ENV} or give --token-file FILE (chmod 600)")
    if not _TOKEN.fullmatch(token):
        raise ConfigError(f"{where} does not hold a token (one line of printable characters)")
    return token


def pack_run_dir(run_dir: Path) -> bytes:
    """A gzip tar of the run directory's regular files (flat names; links and folders left out)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(run_dir.iterdir()):
            if path.is_symlink() or not path.is_file() or not _NAME.fullmatch(path.name):
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _line(text: str) -> str:
    """One line of what a server said, safe to print: control characters shown as ``?``."""
    flat = " ".join(text.split())[:300]
    return "".join("?" if unicodedata.category(c).startswith("C") else c for c in flat)


@dataclass
class RemoteLog:
    """The API of an ``inferaudit serve`` log at ``url`` (module docstring)."""

    url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    transport: httpx.BaseTransport | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"log URL {self.url[:80]!r}: expected http(s)://...")

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        where = f"{self.url}{path}"
        headers = {"Accept": "application/json, text/plain"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if auth:
            if self.token is None:
                raise ConfigError(f"{where}: a token is needed (set {TOKEN_ENV} or --token-file)")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(
                transport=self.transport,
                timeout=timeout_s or self.timeout_s,
                follow_redirects=False,
            ) as client:
                response = client.request(method, where, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise RemoteLogError(f"{where}: {type(exc).__name__}: {_line(str(exc))}") from None
        if len(response.content) > MAX_ANSWER_BYTES:
            raise RemoteLogError(f"{where}: answer over {MAX_ANSWER_BYTES:,} bytes")
        if response.status_code != 200:
            detail = response.text
            try:
                body = orjson.loads(response.content)
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    detail = body["error"]
            except orjson.JSONDecodeError:
                pass
            raise RemoteLogError(f"{where}: HTTP {response.status_code}: {_line(detail)}")
        return response

    def _json(self, response: httpx.Response, keys: dict[str, type]) -> dict[str, Any]:
        where = str(response.request.url)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RemoteLogError(f"{where}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise RemoteLogError(f"{where}: the answer is not a JSON object")
        for key, kind in keys.items():
            value = body.get(key)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise RemoteLogError(f"{where}: the answer's {key!r} is missing or malformed")
        return body

    def checkpoint(self) -> str:
        """The log's latest checkpoint note (no token needed): a reachability check."""
        return self._request("GET", "/checkpoint", auth=False, timeout_s=15.0).text

    def submit_evidence(self, envelope: bytes) -> RemoteReceipt:
        """Submit a run's DSSE envelope; the answer is checked against the envelope's leaf."""
        response = self._request(
            "POST", "/api/v1/evidence", content=envelope, content_type="application/json"
        )
        body = self._json(
            response, {"index": int, "origin": str, "log_key": str, "checkpoint": str, "proof": str}
        )
        where = str(response.request.url)
        try:
            log_key = parse_verifier(body["log_key"])
        except KeyFormatError as exc:
            raise RemoteLogError(f"{where}: the answer's log key: {exc}") from None
        if log_key.name != body["origin"]:
            raise RemoteLogError(f"{where}: log key {log_key.keyid} is not the origin's")
        self._check_proof(where, envelope, body["index"], body["proof"], log_key)
        return RemoteReceipt(
            index=body["index"],
            origin=body["origin"],
            log_key=log_key,
            checkpoint=body["checkpoint"],
            proof_text=body["proof"],
        )

    def upload_bundle(self, index: int, run_dir: Path) -> BundleReceipt:
        """Upload the run directory as the bundle of entry ``index``."""
        response = self._request(
            "PUT",
            f"/api/v1/runs/{index}/bundle",
            content=pack_run_dir(run_dir),
            content_type="application/gzip",
        )
        body = self._json(response, {"index": int, "status": str})
        reason = body.get("reason")
        if body["index"] != index or body["status"] not in ("verified", "unverified"):
            raise RemoteLogError(f"{response.request.url}: the answer is not about entry {index}")
        return BundleReceipt(
            index, body["status"], _line(reason) if isinstance(reason, str) else None
        )

    def submit_claim(self, envelope: bytes, log_key: Verifier | None = None) -> ClaimReceipt:
        """Submit a capacity claim's DSSE envelope; its proof is checked (the checkpoint's
        signature too, when ``log_key`` is given)."""
        response = self._request(
            "POST", "/api/v1/claims", content=envelope, content_type="application/json"
        )
        body = self._json(response, {"index": int, "claim_id": str, "proof": str})
        self._check_proof(
            str(response.request.url), envelope, body["index"], body["proof"], log_key
        )
        return ClaimReceipt(body["index"], body["claim_id"], body["proof"])

    @staticmethod
    def _check_proof(
        where: str, envelope: bytes, index: int, text: str, log_key: Verifier | None
    ) -> None:
        try:
            proof = parse_tlog_proof(text)
            if log_key is not None:
                cp, _ = open_checkpoint(proof.checkpoint, [log_key])
            else:
                cp = parse_checkpoint(split_note(proof.checkpoint)[0])
            if proof.index != index:
                raise RemoteLogError(f"{where}: the proof is for entry {proof.index}, not {index}")
            leaf = envelope_leaf(parse_envelope(envelope))
            merkle.verify_inclusion(
                index, cp.size, merkle.hash_leaf(leaf), list(proof.hashes), cp.root
            )
        except NoteError as exc:
            raise RemoteLogError(f"{where}: the answer's proof: {exc}") from None
        except merkle.ProofError as exc:
            raise RemoteLogError(f"{where}: the answer's proof does not verify: {exc}") from None


def seal_run_remote(run_dir: Path, signer: Signer, remote: RemoteLog) -> dict[str, object]:
    """Sign the run's statement here, log it remotely, write its evidence files (docstring)."""
    published = publish(build_statement(run_dir), signer, None)  # signs; sizes checked first
    receipt = remote.submit_evidence(published.envelope)
    (run_dir / STATEMENT_FILE).write_bytes(published.statement)
    (run_dir / ENVELOPE_FILE).write_bytes(published.envelope)
    (run_dir / PROOF_FILE).write_text(receipt.proof_text)
    out: dict[str, object] = {"statement": STATEMENT_FILE, "envelope": ENVELOPE_FILE}
    out.update(published.to_json())
    out.update(
        {
            "ledger_index": receipt.index,
            "ledger_origin": receipt.origin,
            "log_key": receipt.log_key.text(),
            "log_url": remote.url,
            "proof": PROOF_FILE,
        }
    )
    return out
