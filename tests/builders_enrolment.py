"""Builders for enrolment tests: Contracts with their premiums, and a small scheme (places, an officer, a family,
products) created through the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from tests.builders import CS, EXT, PROFILE, ident, location, patient
from tests.builders import group as family_group
from tests.builders_medical import insurance_plan
from tests.builders_practitioner import enrolment_officer

HIFHIR_EXT = "https://hifhir.org/fhir/StructureDefinition/"
CONTRACT_PROFILE = f"{PROFILE}openimis-contract"
COVERAGE_PROFILE = f"{PROFILE}openimis-coverage"
TODAY = date.today()


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


def years_ago(n: int, days: int = 0) -> str:
    """A birth date: exactly n years before today (minus `days`)."""
    try:
        d = TODAY.replace(year=TODAY.year - n)
    except ValueError:  # 29 February
        d = TODAY.replace(year=TODAY.year - n, day=28)
    return (d - timedelta(days=days)).isoformat()


def premium(amount: Any, receipt: str, pay_date: str, *, category: str = "C", pay_type: str = "C",
            payer: str | None = "beneficiary", currency: str | None = "EUR") -> dict[str, Any]:
    money: dict[str, Any] = {"value": amount}
    if currency:
        money["currency"] = currency
    parts: list[dict[str, Any]] = []
    if payer:
        parts.append({"url": "payer", "valueCodeableConcept": {"coding": [
            {"system": f"{CS}contract-premium-payer", "code": payer}]}})
    parts += [
        {"url": "category", "valueCodeableConcept": {"coding": [
            {"system": f"{CS}contract-premium-category", "code": category}]}},
        {"url": "amount", "valueMoney": money},
        {"url": "receipt", "valueString": receipt},
        {"url": "date", "valueDate": pay_date},
        {"url": "type", "valueCodeableConcept": {"coding": [
            {"system": f"{CS}contract-premium-type", "code": pay_type}]}},
    ]
    return {"url": f"{EXT}contract-premium", "extension": parts}


def contract(subject: str, head_id: str, covered_ids: list[str], product_id: str, *, issued: str,
             officer_id: str | None = None, premiums: list[dict[str, Any]] | None = None, scope: str = "informal",
             status: str = "offered", net: Any = 0, policy_status: str | None = None) -> dict[str, Any]:
    """A Contract as a point of service sends it. `subject` is `Group/<id>` or `Organization/<id>`. The periods
    and net value are placeholders: the server computes them."""
    asset: dict[str, Any] = {}
    if premiums:
        asset["extension"] = premiums
    asset.update({
        "typeReference": [{"reference": f"Patient/{i}"} for i in covered_ids],
        "period": [{"start": issued, "end": issued}],
        "usePeriod": [{"start": issued, "end": issued}],
        "valuedItem": [{"entityReference": {"reference": f"InsurancePlan/{product_id}"},
                        "net": {"value": net, "currency": "EUR"}}],
    })
    res: dict[str, Any] = {
        "resourceType": "Contract",
        "meta": {"profile": [CONTRACT_PROFILE]},
        "status": status,
        "issued": issued,
        "subject": [{"reference": subject}],
        "scope": {"coding": [{"system": f"{CS}contract-scope", "code": scope}]},
        "term": [{
            "offer": {"party": [{
                "reference": [{"reference": f"Patient/{head_id}"}],
                "role": {"coding": [{"system": f"{CS}contract-resource-party-role", "code": "beneficiary",
                                     "display": "Beneficiary"}]}}]},
            "asset": [asset],
        }],
    }
    if officer_id:
        res["author"] = {"reference": f"Practitioner/{officer_id}"}
    if policy_status:
        res["extension"] = [{"url": f"{HIFHIR_EXT}policy-status", "valueCode": policy_status}]
    return res


def cycles(*starts: str) -> list[dict[str, Any]]:
    return [{"url": f"{EXT}insurance-plan-start-cycle", "valueString": s} for s in starts]


def with_relationship(resource: dict[str, Any], code: str) -> dict[str, Any]:
    resource["contact"] = [{"relationship": [{"coding": [{"system": f"{CS}patient-contact-relationship",
                                                          "code": code}]}],
                            "name": {"family": "x", "given": ["x"]}}]
    return resource


def _created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    return resp.json()


@dataclass
class Scheme:
    """R1 → D1 → W1 → V1 (and R2 → … → V2 elsewhere), officer E00001, the Doe family in V1:
    head (adult), spouse (adult), two children; a per-person product FC01 (FCUL0001's contribution plan, no
    cycles) and a lump-sum product BC01 (BCUL0001's) sold in R1."""

    places: dict[str, str] = field(default_factory=dict)
    officer: str = ""
    family: str = ""
    members: dict[str, str] = field(default_factory=dict)  # head, spouse, child1, child2 → Patient id
    products: dict[str, str] = field(default_factory=dict)  # code → InsurancePlan id

    @property
    def head(self) -> str:
        return self.members["head"]

    def all_members(self) -> list[str]:
        return list(self.members.values())


def make_places(api: Any) -> dict[str, str]:
    ids: dict[str, str] = {}
    for suffix, name in (("1", "Ultha"), ("2", "Tahida")):
        ids[f"R{suffix}"] = _created(api.post("Location", location(f"R{suffix}", name, "R")))["id"]
        ids[f"D{suffix}"] = _created(api.post("Location", location(f"R{suffix}D1", f"{name} D", "D",
                                                                   ids[f"R{suffix}"])))["id"]
        ids[f"W{suffix}"] = _created(api.post("Location", location(f"R{suffix}D1W1", f"{name} W", "W",
                                                                   ids[f"D{suffix}"])))["id"]
        ids[f"V{suffix}"] = _created(api.post("Location", location(f"R{suffix}D1W1V1", f"{name} V", "V",
                                                                   ids[f"W{suffix}"])))["id"]
    return ids


def make_family(api: Any, village: str, prefix: str = "1000000", *,
                births: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A family (head first); returns (Group id, role → Patient id)."""
    births = births or {"head": years_ago(40), "spouse": years_ago(38), "child1": years_ago(10),
                        "child2": years_ago(5)}
    members: dict[str, str] = {}
    for i, (role, birth) in enumerate(births.items()):
        body = patient(f"{prefix}{i}", "Doe", role.capitalize(), village, birth_date=birth, head=role == "head")
        members[role] = _created(api.post("Patient", body))["id"]
    group = _created(api.post("Group", family_group(f"{prefix}0", list(members.values()), village)))["id"]
    return group, members


FC01 = dict(lump_sum=0, threshold=6, member_count=9999, premium_adult=4000, premium_child=4000, max_installments=3,
            extra_costs={"registrationLumpsum": 1000, "generalAssemblyLumpSum": 1000})
BC01 = dict(lump_sum=10000, threshold=6, member_count=6, max_installments=1)


def make_product(api: Any, code: str, area: str | None, *, start: str = "2020-01-01", end: str = "2035-12-31",
                 **kw: Any) -> str:
    return _created(api.post("InsurancePlan", insurance_plan(code, f"Product {code}", area, start=start, end=end,
                                                             **kw)))["id"]


def make_scheme(api: Any) -> Scheme:
    s = Scheme()
    s.places = make_places(api)
    s.officer = _created(api.post("Practitioner", enrolment_officer("E00001", district_id=s.places["D1"])))["id"]
    s.family, s.members = make_family(api, s.places["V1"])
    s.products["FC01"] = make_product(api, "FC01", s.places["R1"], **FC01)  # type: ignore[arg-type]
    s.products["BC01"] = make_product(api, "BC01", s.places["R1"], **BC01)  # type: ignore[arg-type]
    return s


def family_contract(s: Scheme, product: str = "BC01", *, covered: list[str] | None = None, issued: str | None = None,
                    premiums: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return contract(f"Group/{s.family}", s.head, covered if covered is not None else s.all_members(),
                    s.products[product], issued=issued or days_ago(10), officer_id=s.officer, premiums=premiums,
                    **kw)


def enrolment_bundle(s: Scheme, village: str, members: list[tuple[str, str, str]], *, contract_uuid: str,
                     product: str = "BC01", issued: str | None = None,
                     premiums: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A family's whole enrolment as a mobile app sends it in one transaction: each member's Patient (head first;
    `members` are (insurance number, given name, birth date)), the Group, then the Contract, all linked by urn:uuid
    fullUrls, and every entry conditional (`ifNoneExist`) so that the app may resend it after a lost response.
    The Contract carries identifier[UUID] `contract_uuid`, which becomes its id."""
    entries: list[dict[str, Any]] = []
    for i, (code, given, born) in enumerate(members):
        entries.append({"fullUrl": f"urn:uuid:{i:08d}-1111-4000-8000-000000000000",
                        "resource": patient(code, "Mensah", given, village, birth_date=born, head=i == 0),
                        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={code}"}})
    refs = [e["fullUrl"] for e in entries]
    fam = family_group(members[0][0], [], village)
    fam["member"] = [{"entity": {"reference": r}} for r in refs]
    fam["quantity"] = len(refs)
    group_url = "urn:uuid:99999999-1111-4000-8000-000000000000"
    entries.append({"fullUrl": group_url, "resource": fam,
                    "request": {"method": "POST", "url": "Group", "ifNoneExist": f"identifier={members[0][0]}"}})
    policy = contract(group_url, refs[0], [], s.products[product], issued=issued or days_ago(1),
                      officer_id=s.officer, premiums=premiums)
    policy["identifier"] = [ident(contract_uuid, "UUID")]
    policy["term"][0]["offer"]["party"][0]["reference"] = [{"reference": refs[0]}]
    policy["term"][0]["asset"][0]["typeReference"] = [{"reference": r} for r in refs]
    entries.append({"fullUrl": f"urn:uuid:{contract_uuid}", "resource": policy,
                    "request": {"method": "POST", "url": "Contract", "ifNoneExist": f"identifier={contract_uuid}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
