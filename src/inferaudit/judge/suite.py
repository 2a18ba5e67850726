"""Which integrity checks a run does, and when: the one entry point ``runs.py`` calls.

Contract (``runs.execute``)::

    suite = plan_checks(spec, selected=None | [names], tokenizer=Path | None,
                        fingerprint=Path | None, api_key=str | None)
    verdicts = suite.before_run(records_path, observer)     # conformance probes (phase "probe")
    run_load(..., injected=suite.injected_plans())          # fingerprint prompts at measured ids
    verdicts += suite.after_run(records_path, observer)     # record checks + extra phases

``observer`` has ``phase(name, total)`` and ``record(dict)`` (``runs.RunObserver``); it may be
None. Extra phases append their records to ``records_path`` under their own phase names
(``probe``, ``cache-unique``, ``cache-repeat``, ``prefix-prime``, ``prefix-hit``,
``prefix-miss``); ``metrics`` counts only ``measure``.

Checks (``--checks`` names, in the order they run):
  conformance       probes before the run (model listed, max_tokens, ignore_eos/min_tokens,
                    seed, include_usage, stream reassembly)
  output-length     every request reached its asked length (enforced) / the distribution
  token-accounting  usage vs the client's count (exact with --tokenizer, bounds without)
  first-token       no early empty/role-only chunk faking TTFT; streams reassemble
  fluidity          share of tokens delivered in bursts
  identity          fingerprint agreement (only with --fingerprint)
  caching           repeated vs unique prompts (MLPerf TEST04 idea), after the run
  prefix-cache      TTFT after a priming request vs fresh prompts (KS test), after the run
  errors            failures per phase; measured failures are SLO violations
Default: all of them, ``identity`` only when a fingerprint is given.

Every verdict is a function of the records (``recheck``): the network phases only add records,
so ``verify`` can recompute the verdicts offline from ``records.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inferaudit.errors import ConfigError
from inferaudit.judge import caching, conformance, identity
from inferaudit.judge.first_token import check_first_token
from inferaudit.judge.fluidity import check_fluidity
from inferaudit.judge.output_length import check_output_length
from inferaudit.judge.shedding import check_errors
from inferaudit.judge.token_accounting import check_token_accounting
from inferaudit.judge.verdict import Verdict, format_verdict
from inferaudit.measure.fingerprint import Fingerprint, load_fingerprint, replay_plans
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record, read_records
from inferaudit.measure.tokenizer import Tokenizer, load_tokenizer
from inferaudit.measure.workload import RequestPlan

__all__ = [
    "ALL_CHECKS",
    "USES_TOKENIZER",
    "CheckSuite",
    "format_verdict",
    "plan_checks",
    "recheck",
]

ALL_CHECKS: tuple[str, ...] = (
    "conformance",
    "output-length",
    "token-accounting",
    "first-token",
    "fluidity",
    "identity",
    "caching",
    "prefix-cache",
    "errors",
)
# Checks whose verdict depends on the run's tokenizer file (token counts), when it had one.
USES_TOKENIZER: tuple[str, ...] = ("conformance", "output-length", "token-accounting")


class Observer(Protocol):
    def phase(self, name: str, total: int | None) -> None: ...

    def record(self, record: dict[str, Any]) -> None: ...


@dataclass
class CheckSuite:
    spec: RunSpec
    names: tuple[str, ...]
    api_key: str | None = None
    tokenizer: Tokenizer | None = None
    fingerprint: Fingerprint | None = None
    cache_requests: int = 16
    prefix_pairs: int = 12
    probe_length: int = conformance.LENGTH
    _injected: dict[int, RequestPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fingerprint is not None and "identity" in self.names:
            self._injected = replay_plans(self.fingerprint, self.spec)

    def before_run(
        self, records_path: Path | None, observer: Observer | None = None
    ) -> list[Verdict]:
        """Conformance probes; their records go to ``records_path`` (phase "probe")."""
        if "conformance" not in self.names:
            return []
        on_record = _phase(observer, "checks: conformance probes", None)
        return [
            conformance.run_conformance(
                self.spec,
                api_key=self.api_key,
                records_path=records_path,
                tokenizer=self.tokenizer,
                on_record=on_record,
                length=self.probe_length,
            )
        ]

    def injected_plans(self) -> dict[int, RequestPlan]:
        """Fingerprint prompts to send at these measured ids (empty without ``identity``)."""
        return dict(self._injected)

    def after_run(self, records_path: Path, observer: Observer | None = None) -> list[Verdict]:
        """Send the extra phases (appended to ``records_path``), then judge every record."""
        on = self.names.__contains__
        if on("caching"):
            caching.run_caching(
                self.spec,
                api_key=self.api_key,
                records_path=records_path,
                requests=self.cache_requests,
                on_record=_phase(observer, "checks: caching audit", 2 * self.cache_requests),
            )
        if on("prefix-cache"):
            caching.run_prefix_probe(
                self.spec,
                api_key=self.api_key,
                records_path=records_path,
                pairs=self.prefix_pairs,
                on_record=_phase(observer, "checks: prefix-reuse probe", 4 * self.prefix_pairs),
            )
        names = tuple(n for n in self.names if n != "conformance")
        return recheck(
            read_records(records_path),
            self.spec,
            names=names,
            tokenizer=self.tokenizer,
            fingerprint=self.fingerprint,
        )


def recheck(
    records: Sequence[Record],
    spec: RunSpec,
    *,
    names: Sequence[str],
    tokenizer: Tokenizer | None = None,
    fingerprint: Fingerprint | None = None,
    model_listed: str = "not re-checked (needs the endpoint)",
) -> list[Verdict]:
    """The verdicts of ``names`` from the records alone (all phases), in the canonical order.

    This is what ``after_run`` computes, so ``verify`` can recompute every verdict offline from
    ``records.jsonl``; only conformance's "model listed" item needs the endpoint, and is taken
    from ``model_listed``. ``identity`` needs the fingerprint file, ``token-accounting`` the
    tokenizer when the run had one.
    """
    out: list[Verdict] = []
    for name in (n for n in ALL_CHECKS if n in names):
        if name == "conformance":
            out.append(
                conformance.check_conformance(
                    records, spec, tokenizer=tokenizer, model_listed=model_listed
                )
            )
        elif name == "output-length":
            out.append(check_output_length(records, spec, tokenizer=tokenizer))
        elif name == "token-accounting":
            out.append(check_token_accounting(records, tokenizer=tokenizer))
        elif name == "first-token":
            out.append(check_first_token(records))
        elif name == "fluidity":
            out.append(check_fluidity(records))
        elif name == "identity":
            if fingerprint is None:
                raise ConfigError("the identity check needs the run's --fingerprint file")
            out.append(identity.check_identity(records, fingerprint))
        elif name == "caching":
            out.append(caching.check_caching(records))
        elif name == "prefix-cache":
            out.append(caching.check_prefix_cache(records))
        elif name == "errors":
            out.append(check_errors(records))
        else:
            raise AssertionError(f"check {name!r} in ALL_CHECKS has no judge")
    return out


def _phase(
    observer: Observer | None, name: str, total: int | None
) -> Callable[[dict[str, Any]], None] | None:
    if observer is None:
        return None
    observer.phase(name, total)
    return observer.record


def default_checks(fingerprint: bool) -> tuple[str, ...]:
    return tuple(n for n in ALL_CHECKS if n != "identity" or fingerprint)


def plan_checks(
    spec: RunSpec,
    *,
    selected: Sequence[str] | None = None,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
    api_key: str | None = None,
) -> CheckSuite:
    """The checks for this run: ``selected`` (``[]``: none), else ``spec.checks`` when it names
    any, else the defaults (all that fit: ``identity`` only with a fingerprint)."""
    chosen = list(selected) if selected is not None else (list(spec.checks) or None)
    if chosen is None:
        names = default_checks(fingerprint is not None)
    else:
        unknown = [n for n in chosen if n not in ALL_CHECKS]
        if unknown:
            raise ConfigError(
                f"--checks {unknown[0]!r}: unknown check (known: {', '.join(ALL_CHECKS)})"
            )
        if "identity" in chosen and fingerprint is None:
            raise ConfigError("--checks identity needs --fingerprint FILE")
        names = tuple(n for n in ALL_CHECKS if n in chosen)
    return CheckSuite(
        spec=spec,
        names=names,
        api_key=api_key,
        tokenizer=load_tokenizer(tokenizer) if tokenizer is not None else None,
        fingerprint=load_fingerprint(fingerprint) if fingerprint is not None else None,
    )
