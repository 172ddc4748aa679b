"""IG corrections: the only place where the validator deviates from the IG artefacts.

Each entry fixes a defect of the openIMIS FHIR R4 IG 1.0.0 documented in the shared IG
research report (``shared/ig/README.md`` §9). The compiled plans are patched from these
tables, so the StructureDefinitions/ValueSets under ``data/ig`` stay byte-identical to the
SUSHI output.
"""

from __future__ import annotations

B = "https://openimis.github.io/openimis_fhir_r4_ig"
SD = f"{B}/StructureDefinition/"

# (profile url, element id) -> new max ("*" or an int as str).
# README §9.3: InsurancePlan `plan.generalCost` is 1..1 but has 7 slices (lumpsum,
# premiumAdult, ...); real products carry several costs, so it is implemented as 1..*.
# The slices keep their own cardinalities: lumpsum 1..1, each other cost 0..1
# (see fhir/profiles/insurance_plan.py for the mapping to the product's columns).
MAX_OVERRIDES: dict[tuple[str, str], str] = {
    (SD + "openimis-insurance-plan", "InsurancePlan.plan.generalCost"): "*",
    # CoverageEligibilityResponse: the benefit package lists 6 `*_left` counts and 5 category amounts, which fill
    # the IG's 0..11 (amount slice 0..5); the deductibles and ceilings left (3 + 3 codes of CodeSystem
    # coverage-item-benefit-type, ig/README.md §3a) would not fit. Raised to 17 (amount slice 11) so that an
    # enquiry reports them (fhir/profiles/eligibility.py); each code still appears at most once.
    (SD + "openimis-coverage-eligibility-response",
     "CoverageEligibilityResponse.insurance.item:benefit.benefit"): "17",
    (SD + "openimis-coverage-eligibility-response",
     "CoverageEligibilityResponse.insurance.item:benefit.benefit:amount"): "11",
    # Subscription.channel.payload is 0..0 (empty notifications only); issue 6 also lets a subscriber ask for the
    # resource itself (`application/fhir+json`, fhir/profiles/subscription.py): 0..1, as in base R4.
    (SD + "openimis-subscription", "Subscription.channel.payload"): "1",
}

# (profile url, sliced element id) -> extra discriminator values accepted although no
# slice matches them (the closed slicing is opened for exactly these values).
# README §9.8: Claim.supportingInfo slicing is closed with slices explanation/guarantee/
# attachment, but the IG CodeSystem claim-supporting-info-category also has
# `justification`, which could otherwise never be sent.
CLOSED_SLICING_EXTRA_VALUES: dict[tuple[str, str], frozenset[str]] = {
    (SD + "openimis-claim", "Claim.supportingInfo"): frozenset({"justification"}),
}

# (profile url, element id prefix, constraint key): invariants not enforced there.
# README §9.4 / §1c: the IG's CoverageEligibilityResponse `item`/`service` slices of
# insurance.item require both category and productOrService, contradicting base ces-1
# (category XOR productOrService). We follow the IG: ces-1 is not enforced on those slices
# (it stays enforced on the `benefit` slice and on unsliced items).
SKIPPED_CONSTRAINTS: frozenset[tuple[str, str, str]] = frozenset(
    {
        (
            SD + "openimis-coverage-eligibility-response",
            "CoverageEligibilityResponse.insurance.item:item",
            "ces-1",
        ),
        (
            SD + "openimis-coverage-eligibility-response",
            "CoverageEligibilityResponse.insurance.item:service",
            "ces-1",
        ),
    }
)

# value set url -> extra (system, code) pairs accepted in that value set.
# README §9.5: the FSH alias `GroupTypeCS` = http://hl7.org/fhir/group-type shadows the
# local CodeSystem group-type, so VS group-type includes the *core* group-type system and
# the examples code family type `H` with the core system. We accept the local codes with
# both the intended system ({B}/CodeSystem/group-type) and the core system.
_GROUP_TYPE_CODES = ("C", "G", "H", "O", "P", "S", "T")
VALUESET_ADDITIONS: dict[str, frozenset[tuple[str, str]]] = {
    f"{B}/ValueSet/group-type": frozenset(
        [(f"{B}/CodeSystem/group-type", c) for c in _GROUP_TYPE_CODES]
        + [("http://hl7.org/fhir/group-type", c) for c in _GROUP_TYPE_CODES]
    ),
    # README §3b: VS coverage-item-benefit-type-amount-left (the amount slice of the eligibility response's
    # benefit package) has the hospital/non-hospital deductions and ceilings but leaves out `total_deduction`
    # and `total_ceiling`, which its CodeSystem defines for the general (not care-specific) ones.
    f"{B}/ValueSet/coverage-item-benefit-type-amount-left": frozenset(
        (f"{B}/CodeSystem/coverage-item-benefit-type", c) for c in ("total_deduction", "total_ceiling")
    ),
    # Domain §3.3.3: CodeSystem claim-rejection-reasons (and so the required VS of ClaimResponse's adjudication
    # reason) stops at 19, but openIMIS rejects with −2 (rejected by the claim-AI evaluation, reference §5.1),
    # 20 (invalid claim: hifhir's checks use it for a total that is not the sum of the lines) and 21 (no
    # coverage). Without them a ClaimResponse carrying one of those reasons would fail its own profile.
    f"{B}/ValueSet/claim-rejection-reasons": frozenset(
        (f"{B}/CodeSystem/claim-rejection-reasons", c) for c in ("-2", "20", "21")
    ),
}
