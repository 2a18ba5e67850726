"""Which integrity checks a run does, and the one place that judges them all (pure).

Contract (``audit.run.execute``)::

    suite = plan_checks(spec, selected=None | [names], tokenizer=Path | None,
                        fingerprint=Path | None)
    traffic = suite.traffic(spec)          # measure.probes.plan: positions from the secret seed
    send traffic.before (phase "probe"), run_load(..., injected=traffic.injected),
    send traffic.after (phase "audit")     # measure.probes.send: the only part that sends
    verdicts = suite.judge(records, model_listed=..., server=samples | None)
                                           # == recheck(...), what verify recomputes

Checks (``--checks`` names, in canonical order):
  conformance       probes before the run and the measured lengths (model listed, max_tokens,
                    ignore_eos/min_tokens, seed, include_usage, stream reassembly)
  output-length     every request reached its asked length (enforced) / the distribution
  token-accounting  usage vs the client's count (exact with --tokenizer, bounds without)
  first-token       no early empty/role-only chunk faking TTFT; streams reassemble
  fluidity          share of tokens delivered in bursts
  identity          fingerprint replays inside the load (only with --fingerprint)
  caching           repeated prompts (inside the load, or in the audit block) vs controls
  prefix-cache      shared-prefix prompts (likewise) vs controls
  errors            failures per phase; measured failures are SLO violations
  server-counters   the server's /metrics counters over the load vs what the client received
                    (only when the run scraped them: ``server-metrics.jsonl``; else no verdict)
Default: all of them, ``identity`` only when a fingerprint is given.

Every verdict is a function of the records (``recheck``) and, for ``server-counters``, of the
run's server samples: the traffic only adds records, so ``verify`` recomputes the verdicts
offline from ``records.jsonl`` (and ``server-metrics.jsonl``). Nothing here sends a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inferaudit.errors import ConfigError
from inferaudit.judge import caching, conformance, identity, traffic_v1
from inferaudit.judge.first_token import check_first_token
from inferaudit.judge.fluidity import check_fluidity
from inferaudit.judge.legacy import check_first_token_v1, check_fluidity_v1
from inferaudit.judge.noise import ClientWindow, lag_reason, of_load, run_lag_problem
from inferaudit.judge.output_length import check_output_length
from inferaudit.judge.server_counters import check_server_counters
from inferaudit.judge.shedding import check_errors
from inferaudit.judge.token_accounting import check_token_accounting
from inferaudit.judge.verdict import Verdict, format_verdict
from inferaudit.measure.fingerprint import Entry, Fingerprint, check_fits, load_fingerprint
from inferaudit.measure.planner import Planner
from inferaudit.measure.probes.plan import AuditTraffic, plan_traffic
from inferaudit.measure.protocol import RunSpec
from inferaudit.measure.records import Record
from inferaudit.measure.server_metrics import ServerSample
from inferaudit.measure.tokenizer import Tokenizer, load_tokenizer

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
    "server-counters",
)
# Checks whose verdict depends on the run's tokenizer file (token counts, token boundaries),
# when it had one.
USES_TOKENIZER: tuple[str, ...] = (
    "conformance",
    "output-length",
    "token-accounting",
    "first-token",
)


@dataclass(frozen=True)
class CheckSuite:
    names: tuple[str, ...]
    tokenizer: Tokenizer | None = None
    fingerprint: Fingerprint | None = None

    def traffic(self, spec: RunSpec, planner: Planner | None = None) -> AuditTraffic:
        """The audit traffic these checks need in ``spec``'s run (``spec`` carries its secret
        seed; ``planner``: the run's, when it was built already); refuses a fingerprint that
        does not fit the run (``check_fits``)."""
        on = self.names.__contains__
        replays: tuple[Entry, ...] = ()
        if self.fingerprint is not None and on("identity"):
            check_fits(self.fingerprint, spec)
            replays = self.fingerprint.entries
        return plan_traffic(
            spec,
            conformance=on("conformance"),
            caching=on("caching"),
            prefix=on("prefix-cache"),
            replays=replays,
            planner=planner,
        )

    def judge(
        self,
        records: Sequence[Record],
        spec: RunSpec,
        *,
        model_listed: str = "not re-checked (needs the endpoint)",
        health: Sequence[ClientWindow] | None = None,
        server: Sequence[ServerSample] | None = None,
        summary_reasons: Sequence[str] | None = None,
    ) -> list[Verdict]:
        """Every verdict of this suite from the run's records (exactly ``recheck``)."""
        return recheck(
            records,
            spec,
            names=self.names,
            tokenizer=self.tokenizer,
            fingerprint=self.fingerprint,
            model_listed=model_listed,
            health=health,
            server=server,
            summary_reasons=summary_reasons,
        )


def recheck(
    records: Sequence[Record],
    spec: RunSpec,
    *,
    names: Sequence[str],
    tokenizer: Tokenizer | None = None,
    fingerprint: Fingerprint | None = None,
    model_listed: str = "not re-checked (needs the endpoint)",
    health: Sequence[ClientWindow] | None = None,
    server: Sequence[ServerSample] | None = None,
    summary_reasons: Sequence[str] | None = None,
) -> list[Verdict]:
    """The verdicts of ``names`` from the records alone (all phases), in the canonical order.

    This is what ``after_run`` computes, so ``verify`` can recompute every verdict offline from
    ``records.jsonl``; only conformance's "model listed" item needs the endpoint, and is taken
    from ``model_listed``. ``identity`` needs the fingerprint file, ``token-accounting`` the
    tokenizer when the run had one.

    ``health``: the run's client health windows (``health.jsonl``, possibly empty) for the
    noise-aware timing rules of new runs; ``None`` judges by the frozen v1 rules
    (``judge.legacy``), which is how a v1 run (no ``verdicts.json``) must be re-verified.

    ``server``: the run's server samples (``server-metrics.jsonl``); ``None`` when the run
    scraped none: ``server-counters`` then gives no verdict (nothing to judge it by).

    ``summary_reasons``: the ``invalid_reasons`` of the run's summary of these same records,
    when the caller has it (``inferaudit run`` has just computed it; ``verify`` has just
    recomputed it and found it equal to the signed one). The timing checks are told the
    client-lag reason among them, which is otherwise found by summarizing the records again
    (a fifth of the verdicts' time over a large run's record store).
    """
    legacy = health is None
    # first-token and fluidity judge measured requests: the measured load's own windows
    windows: Sequence[ClientWindow] = () if health is None else of_load(health, "measure")
    # Traffic checks: a spec without a seed commitment is a v1 run (separate phases after the
    # load), judged by the frozen v1 rules (``judge.traffic_v1``).
    v1 = spec.seed_commitment is None
    timing = {"first-token", "fluidity"} | (set() if v1 else {"caching", "prefix-cache"})
    if legacy or not timing & set(names):
        lag = None
    elif summary_reasons is not None:
        lag = lag_reason(summary_reasons)
    else:
        lag = run_lag_problem(records, spec)
    # caching's timing comparison follows the client-noise rules where the run has health data
    noise = None if legacy else health
    out: list[Verdict] = []
    for name in (n for n in ALL_CHECKS if n in names):
        if name == "conformance":
            judge_conformance = (
                traffic_v1.check_conformance_v1 if v1 else conformance.check_conformance
            )
            out.append(
                judge_conformance(records, spec, tokenizer=tokenizer, model_listed=model_listed)
            )
        elif name == "output-length":
            out.append(check_output_length(records, spec, tokenizer=tokenizer))
        elif name == "token-accounting":
            out.append(check_token_accounting(records, tokenizer=tokenizer, legacy=legacy))
        elif name == "first-token":
            out.append(
                check_first_token_v1(records)
                if legacy
                else check_first_token(
                    records, tokenizer=tokenizer, health=windows, lag_problem=lag
                )
            )
        elif name == "fluidity":
            out.append(
                check_fluidity_v1(records)
                if legacy
                else check_fluidity(records, health=windows, lag_problem=lag)
            )
        elif name == "identity":
            if fingerprint is None:
                raise ConfigError("the identity check needs the run's --fingerprint file")
            out.append(identity.check_identity(records, fingerprint))
        elif name == "caching":
            out.append(
                traffic_v1.check_caching_v1(records)
                if v1
                else caching.check_caching(
                    records,
                    allowed=spec.allow_prompt_cache,
                    expected=reuse_expected(spec),
                    health=noise,
                    lag_problem=lag,
                )
            )
        elif name == "prefix-cache":
            out.append(
                traffic_v1.check_prefix_cache_v1(records)
                if v1
                else caching.check_prefix_cache(
                    records,
                    allowed=spec.allow_prompt_cache,
                    expected=reuse_expected(spec),
                    health=noise,
                    lag_problem=lag,
                )
            )
        elif name == "errors":
            out.append(check_errors(records))
        elif name == "server-counters":
            if server is not None:
                out.append(check_server_counters(records, server))
        else:
            raise AssertionError(f"check {name!r} in ALL_CHECKS has no judge")
    return out


def reuse_expected(spec: RunSpec) -> str | None:
    """Why ``spec``'s own workload makes prompts share prefixes (the caching checks then say
    prefix caching is expected instead of failing), or None."""
    wl = spec.workload
    if wl.prefix is not None:
        return (
            f"the workload shares {wl.prefix.groups} system prompt(s) of {wl.prefix.tokens} tokens"
        )
    if wl.sessions is not None:
        return "multi-turn sessions resend each conversation's history"
    if wl.trace is not None and wl.trace.format == "mooncake":
        return "the trace's requests share prefix blocks (hash_ids)"
    return None


def default_checks(fingerprint: bool) -> tuple[str, ...]:
    return tuple(n for n in ALL_CHECKS if n != "identity" or fingerprint)


def plan_checks(
    spec: RunSpec,
    *,
    selected: Sequence[str] | None = None,
    tokenizer: Path | None = None,
    fingerprint: Path | None = None,
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
        names=names,
        tokenizer=load_tokenizer(tokenizer) if tokenizer is not None else None,
        fingerprint=load_fingerprint(fingerprint) if fingerprint is not None else None,
    )
