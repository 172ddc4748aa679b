"""Products (InsurancePlan) through the FHIR API (IG §1b row 13, §2, §9.3; domain §2.14): the IG examples, the
contribution plan with several general costs, the hifhir extensions for coverage lines, ceilings and capitation,
every refused input, the delete rules that products impose on items, services, locations and other products,
and each search parameter."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select

from hifhir.store.tables import product, product_item, product_service
from tests.builders import EXT, ident, location
from tests.builders_medical import (
    HIFHIR_EXT,
    activity_definition,
    assert_valid,
    cost_type,
    coverage_line,
    insurance_plan,
    medication,
    months,
)
from tests.conftest import CLERK, NOBODY, Api, load_example
from tests.http.test_ig_examples import assert_equivalent
from tests.http.test_registers import created, get, put, refused

IP = "InsurancePlan"


def stored(engine: Any, res_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(product).where(product.c.id == res_id)).one()


def lines_of(engine: Any, res_id: str) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        pk = conn.execute(select(product.c.pk).where(product.c.id == res_id)).scalar_one()
        return (conn.execute(select(product_item).where(product_item.c.product_pk == pk)).all(),
                conn.execute(select(product_service).where(product_service.c.product_pk == pk)).all())


def exts(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", []) if e["url"] == url]


def subs(extension: dict[str, Any]) -> dict[str, Any]:
    """Sub-extension url → its value."""
    return {s["url"]: next(v for k, v in s.items() if k.startswith("value")) for s in extension["extension"]}


def ids(api: Any, query: str) -> list[str]:
    body = get(api, query)
    return [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.fixture
def places(api: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    out["R1"] = created(api.post("Location", location("R1", "North", "R")))["id"]
    out["D1"] = created(api.post("Location", location("R1D1", "Hills", "D", out["R1"])))["id"]
    out["W1"] = created(api.post("Location", location("R1D1W1", "Ward", "W", out["D1"])))["id"]
    out["V1"] = created(api.post("Location", location("R1D1W1V1", "Village", "V", out["W1"])))["id"]
    out["R2"] = created(api.post("Location", location("R2", "South", "R")))["id"]
    return out


@pytest.fixture
def provisions(api: Any) -> dict[str, str]:
    return {
        "aspirin": created(api.post("Medication", medication("ASP01", "Aspirin")))["id"],
        "bandage": created(api.post("Medication", medication("BAN01", "Bandage", item_type="M")))["id"],
        "consult": created(api.post("ActivityDefinition", activity_definition("C01", "Consultation")))["id"],
        "surgery": created(api.post("ActivityDefinition", activity_definition("S01", "Surgery")))["id"],
    }


def new_plan(api: Any, code: str, area: str | None, **kw: Any) -> dict[str, Any]:
    return created(api.post(IP, insurance_plan(code, f"Product {code}", area, **kw)))


# --- IG examples -------------------------------------------------------------------------------------------


def test_ig_examples_rx01_and_rx02(api, engine):
    """RX02 reuses RX01's Code (ig/README.md §9.6), so the second of them is a 409 until RX02 gets its own."""
    put(api, load_example("Location-Upper-River-Region"), 201)
    rx01, rx02 = load_example("InsurancePlan-RX01"), load_example("InsurancePlan-RX02")
    # RX01 converts into RX02, which must exist first
    refused(api.put("InsurancePlan/RX01", rx01), 422, expression="InsurancePlan.extension")
    body02 = put(api, rx02, 201)
    assert_equivalent(rx02, body02)
    body = refused(api.put("InsurancePlan/RX01", rx01), 409, expression="InsurancePlan.identifier")
    assert "RX01" in body["issue"][0]["diagnostics"]

    fixed = copy.deepcopy(rx02)
    fixed["identifier"][0]["value"] = "RX02"
    assert_equivalent(fixed, put(api, fixed, 200))
    body01 = put(api, rx01, 201)
    assert_equivalent(rx01, assert_valid(body01))
    assert_equivalent(rx01, get(api, "InsurancePlan/RX01"))
    assert_equivalent(fixed, get(api, "InsurancePlan/RX02"))

    row = stored(engine, "RX01")
    assert (row.code, row.name, row.status, str(row.date_from), str(row.date_to)) == (
        "RX01", "Regional fixed enrolment", "active", "2016-10-01", "2022-12-31")
    assert (row.insurance_period, row.member_count, row.threshold, row.max_installments) == (12, 10, 3, 3)
    assert [str(v) for v in (row.lump_sum, row.premium_adult, row.premium_child, row.registration_fee)] == [
        "1000.00", "100.00", "50.00", "300.00"]
    assert (row.registration_lump_sum, row.general_assembly_fee) == (None, None)
    assert (row.start_cycle_1, row.start_cycle_2, row.start_cycle_3, row.start_cycle_4) == (
        "01-03", "01-07", "01-10", None)
    assert (row.administration_period, row.grace_period_payment, row.grace_period_renewal, row.grace_period) == (
        1, 1, 1, 1)
    assert (row.renewal_discount_perc, row.renewal_discount_period) == (50, 2)
    assert (row.enrolment_discount_perc, row.enrolment_discount_period) == (80, 2)
    assert row.conversion_product_pk == stored(engine, "RX02").pk


def test_ig_examples_validate_with_several_general_costs(api):
    """ig/README.md §9.3: generalCost is 1..1 in the IG but has 7 slices; several costs are accepted, lumpsum
    exactly once."""
    put(api, load_example("Location-Upper-River-Region"), 201)
    rx02 = load_example("InsurancePlan-RX02")
    assert len(rx02["plan"][0]["generalCost"]) == 4
    two_lumpsums = copy.deepcopy(rx02)
    two_lumpsums["plan"][0]["generalCost"].append(copy.deepcopy(rx02["plan"][0]["generalCost"][0]))
    refused(api.put("InsurancePlan/RX02", two_lumpsums), 400, expression="InsurancePlan.plan")
    no_lumpsum = copy.deepcopy(rx02)
    no_lumpsum["plan"][0]["generalCost"] = no_lumpsum["plan"][0]["generalCost"][1:]
    refused(api.put("InsurancePlan/RX02", no_lumpsum), 400, expression="InsurancePlan.plan")
    all_seven = copy.deepcopy(rx02)
    for code in ("registrationLumpsum", "generalAssemblyLumpSum", "generalAssemblyFee"):
        all_seven["plan"][0]["generalCost"].append({"type": cost_type(code), "cost": {"value": 5, "currency": "EUR"}})
    body = assert_valid(put(api, all_seven, 201))
    assert len(body["plan"][0]["generalCost"]) == 7


# --- CRUD, history, rights ---------------------------------------------------------------------------------


def test_product_create_read_update_history_delete(api, engine, places):
    body = new_plan(api, "P1", places["D1"], premium_adult=100.5, premium_child=50)
    pid = assert_valid(body)["id"]
    assert body["coverageArea"] == [{"reference": f"Location/{places['D1']}"}]
    assert body["period"] == {"start": "2020-01-01", "end": "2030-12-31"}
    costs = {c["type"]["coding"][0]["code"]: c for c in body["plan"][0]["generalCost"]}
    assert costs["lumpsum"]["groupSize"] == 3 and costs["lumpsum"]["cost"] == {"value": 1000, "currency": "EUR"}
    assert costs["premiumAdult"]["cost"]["value"] == 100.5 and set(costs) == {"lumpsum", "premiumAdult",
                                                                              "premiumChild"}
    assert get(api, f"{IP}/{pid}") == body

    body["name"] = "Renamed"
    body["status"] = "retired"
    body["plan"][0]["generalCost"] = [c for c in body["plan"][0]["generalCost"]
                                      if c["type"]["coding"][0]["code"] != "premiumChild"]
    v2 = put(api, body)
    assert (v2["meta"]["versionId"], v2["name"], v2["status"]) == ("2", "Renamed", "retired")
    row = stored(engine, pid)
    assert (row.name, row.name_norm, row.premium_child) == ("Renamed", "renamed", None)

    assert api.delete(f"{IP}/{pid}").status_code == 204
    assert api.get(f"{IP}/{pid}").status_code == 410
    history = get(api, f"{IP}/{pid}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    new_plan(api, "P1", places["D1"])  # the code is free again


def test_rights_guard_products(api, client, app, places):
    pid = new_plan(api, "P1", places["R1"])["id"]
    for user in (NOBODY, CLERK):
        other = Api(client, app.tokens.issue(user[0])[0])
        assert other.get(f"{IP}/{pid}").status_code == 403
        assert other.get(f"{IP}?name=Product").status_code == 403
        assert other.post(IP, insurance_plan("P2", "Other", places["R1"])).status_code == 403
        assert other.delete(f"{IP}/{pid}").status_code == 403


def test_national_product_has_a_display_only_coverage_area(api, engine):
    body = assert_valid(new_plan(api, "NAT", None))
    assert body["coverageArea"] == [{"display": "National"}]
    assert stored(engine, body["id"]).location_pk is None
    assert put(api, body)["coverageArea"] == [{"display": "National"}]


# --- rules ---------------------------------------------------------------------------------------------------


def test_product_code_unique_among_current_products(api, places):
    first = new_plan(api, "DUP", places["R1"])
    refused(api.post(IP, insurance_plan("DUP", "Again", places["R2"])), 409, expression="InsurancePlan.identifier")
    other = new_plan(api, "OTHER", places["R1"])
    other["identifier"] = [ident("DUP")]
    refused(api.put(f"{IP}/{other['id']}", other), 409, expression="InsurancePlan.identifier")
    refused(api.post(IP, insurance_plan("TOOLONGCODE", "Long", places["R1"])), 422,
            expression="InsurancePlan.identifier")
    assert api.delete(f"{IP}/{first['id']}").status_code == 204
    new_plan(api, "DUP", places["R2"])


def test_refused_products(api, places, provisions):
    def plan(**kw: Any) -> dict[str, Any]:
        return insurance_plan("BAD", "Bad", places["R1"], **kw)

    cases: list[tuple[dict[str, Any], str]] = [
        (plan(start="2024-01-01", end="2023-12-31"), "InsurancePlan.period"),
        (plan(start="2024-02-30"), "InsurancePlan.period.start"),
        (insurance_plan("BAD", "Bad", places["V1"]), "InsurancePlan.coverageArea"),
        (insurance_plan("BAD", "Bad", places["W1"]), "InsurancePlan.coverageArea"),
        (insurance_plan("BAD", "Bad", "no-such-location"), "InsurancePlan.coverageArea"),
        (plan(threshold=11, member_count=10), "InsurancePlan.plan[0].generalCost[0].groupSize"),
        (plan(lump_sum=-1), "InsurancePlan.plan[0].generalCost[0].cost"),
        (plan(premium_adult=10.123), "InsurancePlan.plan[0].generalCost[1].cost"),
        (plan(period=0), "InsurancePlan.coverage[0].benefit[0].limit[0].value"),
        (plan(max_installments=0), "InsurancePlan.extension[0]"),
        (plan(extensions=[{"url": f"{EXT}insurance-plan-conversion",
                           "valueReference": {"reference": "InsurancePlan/missing"}}]), "InsurancePlan.extension[1]"),
        (plan(extensions=[{"url": f"{EXT}insurance-plan-start-cycle", "valueString": "31-02"}]),
         "InsurancePlan.extension[1]"),
        (plan(extensions=[{"url": f"{EXT}insurance-plan-start-cycle", "valueString": "01-07"},
                          {"url": f"{EXT}insurance-plan-start-cycle", "valueString": "01-07"}]),
         "InsurancePlan.extension[2]"),
        (plan(extensions=[months("insurance-plan-period", 1, "gracePeriodRenewal"),
                          months("insurance-plan-period", 2, "gracePeriodRenewal")]), "InsurancePlan.extension[2]"),
        (plan(extensions=[months("insurance-plan-period", 1000)]), "InsurancePlan.extension[1]"),
        (plan(extensions=[{"url": f"{EXT}insurance-plan-discount", "extension": [
            {"url": "Percentage", "valueDecimal": 120}]}]), "InsurancePlan.extension[1]"),
    ]
    no_members = plan()
    no_members["coverage"][0]["benefit"][0]["limit"].pop()
    cases.append((no_members, "InsurancePlan.coverage[0].benefit[0].limit"))
    usd = plan(premium_adult=5)
    usd["plan"][0]["generalCost"][1]["cost"]["currency"] = "USD"
    cases.append((usd, "InsurancePlan.plan[0].generalCost[1].cost"))
    for resource, expression in cases:
        refused(api.post(IP, resource), 400, 422, expression=expression)
    assert ids(api, IP) == []


def test_conversion_product_exists_and_is_not_itself(api, engine, places):
    target = new_plan(api, "NEXT", places["R1"])
    conversion = {"url": f"{EXT}insurance-plan-conversion", "valueReference": {"reference": f"{IP}/{target['id']}"}}
    source = new_plan(api, "OLD", places["R1"], extensions=[conversion])
    assert exts(source, f"{EXT}insurance-plan-conversion")[0]["valueReference"] == {
        "reference": f"{IP}/{target['id']}"}
    itself = copy.deepcopy(target)
    itself["extension"].append({"url": f"{EXT}insurance-plan-conversion",
                                "valueReference": {"reference": f"{IP}/{target['id']}"}})
    refused(api.put(f"{IP}/{target['id']}", itself), 422, expression="InsurancePlan.extension")
    # a product another one converts into cannot be deleted
    body = refused(api.delete(f"{IP}/{target['id']}"), 409)
    assert "OLD" in body["issue"][0]["diagnostics"]
    assert api.delete(f"{IP}/{source['id']}").status_code == 204
    assert api.delete(f"{IP}/{target['id']}").status_code == 204


def test_periods_and_discounts_follow_the_ig_slice_order_or_their_id(api, engine, places):
    positional = new_plan(api, "POS", places["R1"], extensions=[
        months("insurance-plan-period", 1), months("insurance-plan-period", 2), months("insurance-plan-period", 3),
        months("insurance-plan-period", 4),
        {"url": f"{EXT}insurance-plan-discount", "extension": [{"url": "Percentage", "valueDecimal": 10}]},
        {"url": f"{EXT}insurance-plan-discount", "extension": [
            {"url": "Period", "valueQuantity": {"value": 3, "unit": "months"}}]},
    ])
    row = stored(engine, positional["id"])
    assert (row.administration_period, row.grace_period_payment, row.grace_period_renewal, row.grace_period) == (
        1, 2, 3, 4)
    assert (row.renewal_discount_perc, row.renewal_discount_period) == (10, None)
    assert (row.enrolment_discount_perc, row.enrolment_discount_period) == (None, 3)

    by_id = new_plan(api, "IDS", places["R1"], extensions=[
        months("insurance-plan-period", 6, "gracePeriodRenewal"),
        {"id": "enrolmentDiscount", "url": f"{EXT}insurance-plan-discount",
         "extension": [{"url": "Percentage", "valueDecimal": 5}]},
    ])
    row = stored(engine, assert_valid(by_id)["id"])
    assert (row.administration_period, row.grace_period_payment, row.grace_period_renewal, row.grace_period) == (
        None, None, 6, 0)
    assert (row.renewal_discount_perc, row.enrolment_discount_perc) == (None, 5)
    # rendered with their slice as Extension.id, so a client reading them back cannot mistake one for another
    periods = {e.get("id"): e["valueQuantity"]["value"] for e in exts(by_id, f"{EXT}insurance-plan-period")}
    assert periods == {"gracePeriodRenewal": 6, "gracePeriodEnrolment": 0}
    discounts = {e["id"]: subs(e) for e in exts(by_id, f"{EXT}insurance-plan-discount")}
    assert discounts == {"enrolmentDiscount": {"Percentage": 5}}
    again = put(api, by_id)
    assert stored(engine, again["id"]).grace_period_renewal == 6


# --- coverage lines, ceilings, capitation ------------------------------------------------------------------


def _configured(provisions: dict[str, str]) -> list[dict[str, Any]]:
    return [
        coverage_line(f"Medication/{provisions['aspirin']}", priceOrigin="O", limitationType="F", limitAdult=25.5,
                      limitChild=10, waitingPeriodAdult=3, maxQuantityAdult=12, maxQuantityChild=6,
                      ceilingExclusionAdult="H"),
        coverage_line(f"ActivityDefinition/{provisions['consult']}", priceOrigin="R", limitAdultEmergency=80,
                      limitationTypeReferral="F", limitChildReferral=500),
        {"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": [
            {"url": "dedTreatment", "valueMoney": {"value": 5, "currency": "EUR"}},
            {"url": "maxIpPolicy", "valueMoney": {"value": 100000}},
            {"url": "maxPolicyExtraMember", "valueMoney": {"value": 2500.5}},
            {"url": "maxNoConsultation", "valueUnsignedInt": 12},
            {"url": "maxAmountSurgery", "valueMoney": {"value": 3000}},
            {"url": "ceilingInterpretation", "valueCode": "H"},
            {"url": "ceilingType", "valueCode": "P"},
        ]},
        {"url": f"{HIFHIR_EXT}insurance-plan-capitation", "extension": [
            {"url": "periodRelPrices", "valueCode": "Q"},
            {"url": "level1", "valueCode": "D"},
            {"url": "sublevel1", "valueString": "A"},
            {"url": "shareContribution", "valueDecimal": 80},
            {"url": "weightPopulation", "valueDecimal": 25.5},
        ]},
        {"url": f"{HIFHIR_EXT}insurance-plan-administration", "extension": [
            {"url": "accCodePremiums", "valueString": "4010"},
            {"url": "recurrence", "valueUnsignedInt": 12},
        ]},
    ]


def test_coverage_lines_ceilings_and_capitation_round_trip(api, engine, places, provisions):
    body = assert_valid(new_plan(api, "FULL", places["R1"], extensions=_configured(provisions)))
    items, services = lines_of(engine, body["id"])
    assert len(items) == 1 and len(services) == 1
    item = items[0]
    assert (item.price_origin, item.limitation_type, str(item.limit_adult), str(item.limit_child)) == (
        "O", "F", "25.50", "10.00")
    assert (item.waiting_period_adult, item.waiting_period_child, item.limit_no_adult, item.limit_no_child) == (
        3, None, 12, 6)
    assert (item.ceiling_exclusion_adult, item.limitation_type_r, str(item.limit_adult_e)) == ("H", "C", "100.00")
    service = services[0]
    assert (service.price_origin, str(service.limit_adult_e), service.limitation_type_r,
            str(service.limit_child_r)) == ("R", "80.00", "F", "500.00")
    row = stored(engine, body["id"])
    assert (str(row.ded_treatment), str(row.max_ip_policy), str(row.max_policy_extra_member)) == (
        "5.00", "100000.00", "2500.50")
    assert (row.max_no_consultation, str(row.max_amount_surgery), row.ceiling_interpretation, row.ceiling_type) == (
        12, "3000.00", "H", "P")
    assert (row.period_rel_prices, row.level_1, row.sublevel_1, str(row.share_contribution),
            str(row.weight_population), str(row.weight_insured_population)) == ("Q", "D", "A", "80.00", "25.50",
                                                                                "100.00")
    assert (row.acc_code_premiums, row.recurrence, row.max_treatment) == ("4010", 12, None)

    lines = {subs(e)["provision"]["reference"]: subs(e)
             for e in exts(body, f"{HIFHIR_EXT}insurance-plan-coverage-line")}
    aspirin = lines[f"Medication/{provisions['aspirin']}"]
    assert aspirin["provision"] == {"reference": f"Medication/{provisions['aspirin']}"}  # no display
    assert (aspirin["priceOrigin"], aspirin["limitationType"], aspirin["limitAdult"], aspirin["limitChild"],
            aspirin["limitChildEmergency"], aspirin["maxQuantityAdult"], aspirin["ceilingExclusionAdult"]) == (
        "O", "F", 25.5, 10, 100, 12, "H")
    assert "waitingPeriodChild" not in aspirin
    ceilings = subs(exts(body, f"{HIFHIR_EXT}insurance-plan-ceilings")[0])
    assert ceilings == {"dedTreatment": {"value": 5, "currency": "EUR"},
                        "maxIpPolicy": {"value": 100000, "currency": "EUR"},
                        "maxPolicyExtraMember": {"value": 2500.5, "currency": "EUR"},
                        "maxNoConsultation": 12, "maxAmountSurgery": {"value": 3000, "currency": "EUR"},
                        "ceilingInterpretation": "H", "ceilingType": "P"}
    capitation = subs(exts(body, f"{HIFHIR_EXT}insurance-plan-capitation")[0])
    assert capitation["shareContribution"] == 80 and capitation["weightInsuredPopulation"] == 100
    # what the server renders it accepts back unchanged
    again = put(api, body)
    assert {k: v for k, v in again.items() if k != "meta"} == {k: v for k, v in body.items() if k != "meta"}
    assert lines_of(engine, body["id"]) == (items, services)


def test_ig_only_clients_keep_the_hifhir_data_and_hifhir_clients_replace_it(api, engine, places, provisions):
    body = new_plan(api, "KEEP", places["R1"], extensions=_configured(provisions))
    ig_only = copy.deepcopy(body)
    ig_only["extension"] = [e for e in ig_only["extension"] if not e["url"].startswith(HIFHIR_EXT)]
    ig_only["name"] = "Renamed by an IG client"
    kept = put(api, ig_only)
    assert [e for e in kept["extension"] if e["url"].startswith(HIFHIR_EXT)] == [
        e for e in body["extension"] if e["url"].startswith(HIFHIR_EXT)]
    assert lines_of(engine, body["id"]) != ([], [])

    only_one_line = copy.deepcopy(ig_only)
    only_one_line["extension"].append(coverage_line(f"Medication/{provisions['bandage']}"))
    replaced = put(api, only_one_line)
    items, services = lines_of(engine, body["id"])
    assert len(items) == 1 and services == []
    assert exts(replaced, f"{HIFHIR_EXT}insurance-plan-ceilings") == []
    row = stored(engine, body["id"])
    assert (row.ded_treatment, row.ceiling_type, str(row.share_contribution), row.level_1) == (None, None, "100.00",
                                                                                               None)
    line = subs(exts(replaced, f"{HIFHIR_EXT}insurance-plan-coverage-line")[0])
    assert (line["priceOrigin"], line["limitationType"], line["limitAdult"]) == ("P", "C", 100)


def test_refused_coverage_lines_and_hifhir_extensions(api, places, provisions):
    deleted = created(api.post("Medication", medication("GONE", "Gone")))["id"]
    assert api.delete(f"Medication/{deleted}").status_code == 204
    aspirin = f"Medication/{provisions['aspirin']}"
    cases = [
        [coverage_line(aspirin), coverage_line(aspirin)],
        [coverage_line(f"Medication/{deleted}")],
        [coverage_line("Medication/no-such-item")],
        [coverage_line(f"Location/{places['R1']}")],
        [coverage_line(aspirin, limitAdult=120)],
        [coverage_line(aspirin, limitationType="X")],
        [coverage_line(aspirin, priceOrigin="Z")],
        [coverage_line(aspirin, unknownLimit=1)],
        [coverage_line(aspirin, limitAdult=-1)],
        [{"url": f"{HIFHIR_EXT}insurance-plan-coverage-line", "extension": [{"url": "limitAdult", "valueDecimal": 5}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": [{"url": "ceilingType", "valueCode": "Q"}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": [{"url": "dedTreatment", "valueDecimal": 5}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": [{"url": "maxNoVisits", "valueUnsignedInt": 1}]},
         {"url": f"{HIFHIR_EXT}insurance-plan-ceilings", "extension": [{"url": "maxNoVisits", "valueUnsignedInt": 2}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-capitation", "extension": [{"url": "level1", "valueCode": "Z"}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-capitation", "extension": [
            {"url": "shareContribution", "valueDecimal": 101}]}],
        [{"url": f"{HIFHIR_EXT}insurance-plan-unknown", "valueString": "x"}],
    ]
    for extensions in cases:
        refused(api.post(IP, insurance_plan("BAD", "Bad", places["R1"], extensions=extensions)), 400, 422,
                expression="InsurancePlan.extension")
    assert ids(api, IP) == []


# --- what products forbid elsewhere ------------------------------------------------------------------------


def test_covered_items_and_services_cannot_be_deleted(api, places, provisions):
    plan = new_plan(api, "COV", places["R1"], extensions=[
        coverage_line(f"Medication/{provisions['aspirin']}"),
        coverage_line(f"ActivityDefinition/{provisions['consult']}")])
    for path in (f"Medication/{provisions['aspirin']}", f"ActivityDefinition/{provisions['consult']}"):
        body = refused(api.delete(path), 409)
        assert "COV" in body["issue"][0]["diagnostics"]
    assert api.delete(f"Medication/{provisions['bandage']}").status_code == 204  # not covered
    assert api.delete(f"{IP}/{plan['id']}").status_code == 204
    assert api.delete(f"Medication/{provisions['aspirin']}").status_code == 204
    assert api.delete(f"ActivityDefinition/{provisions['consult']}").status_code == 204


def test_restoring_a_deleted_product_needs_current_coverage_lines(api, places, provisions):
    plan = new_plan(api, "BACK", places["R1"], extensions=[coverage_line(f"Medication/{provisions['aspirin']}")])
    assert api.delete(f"{IP}/{plan['id']}").status_code == 204
    assert api.delete(f"Medication/{provisions['aspirin']}").status_code == 204  # no current product covers it
    ig_only = copy.deepcopy(plan)
    ig_only["extension"] = [e for e in ig_only["extension"] if not e["url"].startswith(HIFHIR_EXT)]
    body = refused(api.put(f"{IP}/{plan['id']}", ig_only), 422, expression="InsurancePlan.extension")
    assert "ASP01" in body["issue"][0]["diagnostics"]
    ig_only["extension"].append(coverage_line(f"Medication/{provisions['bandage']}"))
    restored = put(api, ig_only)
    assert [subs(e)["provision"]["reference"] for e in exts(restored, f"{HIFHIR_EXT}insurance-plan-coverage-line")
            ] == [f"Medication/{provisions['bandage']}"]


def test_item_rename_does_not_re_version_products(api, places, provisions):
    plan = new_plan(api, "REN", places["D1"], extensions=[coverage_line(f"Medication/{provisions['aspirin']}")])
    item = get(api, f"Medication/{provisions['aspirin']}")
    item["code"]["text"] = "Aspirin 500"
    put(api, item)
    region = get(api, f"Location/{places['D1']}")
    region["name"] = "Renamed district"
    put(api, region)
    assert get(api, f"{IP}/{plan['id']}")["meta"]["versionId"] == "1"


def test_a_coverage_area_in_use_cannot_be_deleted(api, places):
    new_plan(api, "AREA", places["R2"])
    body = refused(api.delete(f"Location/{places['R2']}"), 409, 422)
    assert "AREA" in body["issue"][0]["diagnostics"]


# --- search --------------------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(api: Any, places: dict[str, str], provisions: dict[str, str]) -> dict[str, str]:
    out = {"north": new_plan(api, "N1", places["R1"], start="2020-01-01", end="2022-12-31",
                             extensions=[coverage_line(f"Medication/{provisions['aspirin']}")])["id"]}
    conversion = {"url": f"{EXT}insurance-plan-conversion", "valueReference": {"reference": f"{IP}/{out['north']}"}}
    out["hills"] = created(api.post(IP, insurance_plan("H1", "Hills Santé", places["D1"], start="2023-01-01",
                                                       end="2025-06-30", status="draft",
                                                       extensions=[conversion, coverage_line(
                                                           f"ActivityDefinition/{provisions['consult']}")])))["id"]
    out["national"] = new_plan(api, "NAT", None, start="2024-01-01", end="2024-12-31", status="retired")["id"]
    return out


def found(api: Any, query: str, catalogue: dict[str, str]) -> set[str]:
    by_id = {v: k for k, v in catalogue.items()}
    return {by_id[i] for i in ids(api, query)}


@pytest.mark.parametrize(("query", "expected"), [
    ("identifier=H1", {"hills"}),
    ("identifier=Code|NAT", {"national"}),
    ("name=product", {"north", "national"}),
    ("name=hills sante", {"hills"}),
    ("name:contains=ant", {"hills"}),
    ("status=active", {"north"}),
    ("status=draft,retired", {"hills", "national"}),
    ("status:not=active", {"hills", "national"}),
    ("period=2024-06-01", set()),
    ("period=ge2024-06-01&period=le2024-06-01", {"hills", "national"}),
    ("period=le2021-01-01", {"north"}),
    ("period=gt2025-01-01", {"hills"}),
    ("period=sa2022-12-31", {"hills", "national"}),
    ("period=eb2023-01-01", {"north"}),
    ("period=2024", {"national"}),
    ("period=ap2024-06-30", {"hills", "national"}),
    ("coverage-area:missing=true", {"national"}),
    ("coverage-area:missing=false", {"north", "hills"}),
])
def test_search_parameters(api, catalogue, query, expected):
    assert found(api, f"{IP}?{query}", catalogue) == expected


def test_reference_search_parameters(api, catalogue, places, provisions):
    assert found(api, f"{IP}?coverage-area=Location/{places['R1']}", catalogue) == {"north"}
    assert found(api, f"{IP}?coverage-area={places['D1']}", catalogue) == {"hills"}
    assert found(api, f"{IP}?conversion={IP}/{catalogue['north']}", catalogue) == {"hills"}
    assert found(api, f"{IP}?covered-item=Medication/{provisions['aspirin']}", catalogue) == {"north"}
    assert found(api, f"{IP}?covered-service={provisions['consult']}", catalogue) == {"hills"}
    assert found(api, f"{IP}?covered-item={provisions['bandage']}", catalogue) == set()


def test_last_updated_and_sorts(api, catalogue):
    hills = get(api, f"{IP}/{catalogue['hills']}")
    assert found(api, f"{IP}?_lastUpdated=ge{hills['meta']['lastUpdated']}", catalogue) == {"hills", "national"}
    by_id = {v: k for k, v in catalogue.items()}
    assert [by_id[i] for i in ids(api, f"{IP}?_sort=code")] == ["hills", "north", "national"]
    assert [by_id[i] for i in ids(api, f"{IP}?_sort=-period")] == ["national", "hills", "north"]
    assert [by_id[i] for i in ids(api, f"{IP}?_sort=name")] == ["hills", "north", "national"]


def test_include_follows_the_declared_references(api, catalogue, places, provisions):
    body = get(api, f"{IP}?identifier=H1&_include={IP}:coverage-area&_include={IP}:conversion"
                    f"&_include={IP}:covered-service")
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Location", places["D1"]), (IP, catalogue["north"]),
                        ("ActivityDefinition", provisions["consult"])}


@pytest.mark.parametrize("query", ["status=open", "period=2024-13-01", "coverage-area=Patient/x", "name=%3Cx%3E"])
def test_bad_search_values_are_400(api, query):
    refused(api.get(f"{IP}?{query}"), 400)
