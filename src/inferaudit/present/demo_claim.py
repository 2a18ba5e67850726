"""The claim ``inferaudit demo`` tests against the simulated twin."""

from __future__ import annotations

from inferaudit.intent.claims import Claim, ClaimInput, build_claim
from inferaudit.intent.claims.model import Precision


def demo_claim(
    *,
    deployment: str,
    model: str,
    accelerator: str,
    count: int,
    claimed_tokens_per_s: float,
    concurrency: int | None = None,
    context_tokens: int | None = None,
    precision: Precision = "bf16",
    slo: str | None = None,
    claim_id: str | None = None,
    site: str = "inferaudit twin (simulation)",
) -> Claim:
    """The claim ``inferaudit demo`` tests: "``deployment`` serves ``model`` at N tokens/s".

    Give the twin's deployment id (the RunSpec's ``deployment``, or put the returned claim's id
    in the RunSpec's ``claim``), the model name the twin serves (a catalog id or alias, so the
    roofline applies), the simulated accelerator and count, and the claimed output tokens/s.
    The claim is labelled as a simulation and sourced as the vendor's own (self-disclosure).
    """
    cid = claim_id or f"demo-{deployment}".lower().replace("_", "-")[:80]
    return build_claim(
        ClaimInput(
            claim_id=cid,
            claim_type="performance_claim",
            statement=(
                f"Deployment {deployment} (simulated: inferaudit twin) serves {model} on {count} x "
                f"{accelerator} at {claimed_tokens_per_s:g} output tokens/s."
            ),
            status="operational_claimed",
            certainty="unknown",
            source_url="inferaudit://demo",
            source_class="vendor",
            quote="claim made for the inferaudit demo against the simulated twin",
            entities=(("inferaudit demo (simulation)", "operator"),),
            site=site,
            deployment=deployment,
            accelerator=accelerator,
            count=count,
            metric="tokens_per_second",
            value=claimed_tokens_per_s,
            unit="tokens/s",
            basis="announced",
            precision=precision,
            model=model,
            concurrency=concurrency,
            context_tokens=context_tokens,
            slo=slo,
        )
    )
