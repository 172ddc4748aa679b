"""Medical items (Medication) and services (ActivityDefinition) through the FHIR API (IG §1b rows 11–12; domain
§2.11–2.12): CRUD and history, the IG examples, the patient-category and care-type mappings, every refused input,
and each search parameter and sort."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select

from hifhir.store.tables import medical_item, medical_service
from tests import builders_medical
from tests.builders import CS, EXT, ident
from tests.builders_medical import activity_definition, assert_valid, contexts, medication
from tests.conftest import CLERK, NOBODY, Api, load_example
from tests.http.test_ig_examples import assert_equivalent
from tests.http.test_registers import created, get, put, refused

MED_EXAMPLE = "Medication-AspirinMedication"
AD_EXAMPLE = "ActivityDefinition-GeneralConsultationService"


def ext_of(resource: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension", []) if e["url"] == EXT + name), None)


def codes_of(concept: dict[str, Any]) -> list[str]:
    return [c["code"] for c in concept["coding"]]


def med_contexts(med: dict[str, Any]) -> dict[str, list[str]]:
    usage = ext_of(med, "medication-usage-context")
    assert usage is not None
    return {sub["url"]: codes_of(sub["valueUsageContext"]["valueCodeableConcept"]) for sub in usage["extension"]}


def ad_contexts(ad: dict[str, Any]) -> dict[str, list[str]]:
    return {u["code"]["code"]: codes_of(u["valueCodeableConcept"]) for u in ad["useContext"]}


def stored(engine: Any, table: Any, res_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(table).where(table.c.id == res_id)).one()


def ids(api: Any, query: str) -> list[str]:
    body = get(api, query)
    return [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


# --- IG examples -------------------------------------------------------------------------------------------


def test_medication_example_round_trips(api):
    example = load_example(MED_EXAMPLE)
    body = created(api.post("Medication", example))
    # POSTed with identifier[UUID]: that UUID becomes the id, as openIMIS clients expect.
    assert body["id"] == "71EFB78B-64EE-4A68-BE29-87DAF566EB20"
    expected = copy.deepcopy(example)
    del expected["id"]
    assert_equivalent(expected, assert_valid(body))  # the SNOMED codes of code and form included
    assert_equivalent(expected, get(api, f"Medication/{body['id']}"))
    assert ext_of(body, "medication-level")["valueCodeableConcept"]["coding"][0]["code"] == "M"


def test_the_package_openimis_needs_comes_from_the_form(api, engine):
    example = load_example(MED_EXAMPLE)
    body = created(api.post("Medication", example))
    assert stored(engine, medical_item, body["id"]).package == "Tablet"  # the form coding's display
    example["form"] = {"text": "Box of 100"}
    example["identifier"][0]["value"] = "0002"
    del example["identifier"][1]
    body = created(api.post("Medication", example))
    assert body["form"] == {"text": "Box of 100"}
    assert stored(engine, medical_item, body["id"]).package == "Box of 100"


def test_activity_definition_example_round_trips(api, engine):
    example = load_example(AD_EXAMPLE)
    body = created(api.post("ActivityDefinition", example))
    assert body["id"] == "db2c3a6c-af07-49bd-8f6a-96aa1fc2bcf9"
    expected = copy.deepcopy(example)
    del expected["id"]
    # `date` is the date the service last changed (the version's day), not a stored client value.
    expected["date"] = body["meta"]["lastUpdated"][:10]
    assert_equivalent(expected, assert_valid(body))
    assert_equivalent(expected, get(api, f"ActivityDefinition/{body['id']}"))
    row = stored(engine, medical_service, body["id"])
    assert (row.code, row.name, row.service_type, row.care_type, row.patient_category, row.frequency) == (
        "A1", "General Consultation", "P", "O", 15, 0)
    assert str(row.price) == "40.00" and row.level == "S"


def test_examples_round_trip_through_put_as_well(api):
    for name in (MED_EXAMPLE, AD_EXAMPLE):
        example = load_example(name)
        body = put(api, example, 201)
        assert body["id"] == example["id"]
        again = put(api, body, 200)
        assert again["meta"]["versionId"] == "2"
        assert {k: v for k, v in again.items() if k != "meta" and k != "date"} == {
            k: v for k, v in body.items() if k != "meta" and k != "date"}


# --- CRUD and history ------------------------------------------------------------------------------------


def test_medication_create_read_update_history_delete(api, engine):
    body = created(api.post("Medication", medication("PARA01", "Paracetamol 500mg", unit_price=12.5,
                                                      package="Box of 20", quantity=20, frequency=7)))
    mid = assert_valid(body)["id"]
    assert body["meta"]["versionId"] == "1"
    assert body["code"] == {"text": "Paracetamol 500mg"}
    assert body["status"] == "active"
    assert body["form"] == {"text": "Box of 20"} and body["amount"] == {"numerator": {"value": 20}}
    assert ext_of(body, "unit-price")["valueMoney"] == {"value": 12.5, "currency": "EUR"}
    assert ext_of(body, "medication-frequency")["valueTiming"]["repeat"] == {
        "frequency": 1, "period": 7, "periodUnit": "d"}
    assert ext_of(body, "medication-type")["valueCodeableConcept"]["coding"][0] == {
        "system": f"{CS}medication-item-type", "code": "D", "display": "Drug"}
    assert get(api, f"Medication/{mid}") == body

    body["code"]["text"] = "Paracetamol 1g"
    ext_of(body, "unit-price")["valueMoney"]["value"] = 20
    body["extension"] = [e for e in body["extension"] if e["url"] != EXT + "medication-frequency"]
    v2 = put(api, body)
    assert v2["meta"]["versionId"] == "2" and v2["code"]["text"] == "Paracetamol 1g"
    assert ext_of(v2, "medication-frequency") is None
    row = stored(engine, medical_item, mid)
    assert (row.name, str(row.price), row.frequency, row.name_norm) == ("Paracetamol 1g", "20.00", None,
                                                                        "paracetamol 1g")

    assert api.delete(f"Medication/{mid}").status_code == 204
    assert api.get(f"Medication/{mid}").status_code == 410
    history = get(api, f"Medication/{mid}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert get(api, f"Medication/{mid}/_history/1")["code"]["text"] == "Paracetamol 500mg"
    assert ids(api, "Medication?code=PARA01") == []


def test_activity_definition_create_read_update_history_delete(api, engine):
    body = created(api.post("ActivityDefinition", activity_definition(
        "S101", "Surgery minor", unit_price=250.75, service_type="C", care_type="I", category="S", level="H",
        frequency=30)))
    sid = assert_valid(body)["id"]
    assert (body["name"], body["title"], body["status"], body["kind"]) == ("S101", "Surgery minor", "active",
                                                                           "ServiceRequest")
    assert body["date"] == body["meta"]["lastUpdated"][:10]
    assert body["timingTiming"] == {"repeat": {"frequency": 1, "period": 30, "periodUnit": "d"}}
    assert ext_of(body, "unit-price")["valueMoney"] == {"value": 250.75, "currency": "EUR"}
    assert ext_of(body, "activity-definition-level")["valueCodeableConcept"]["coding"][0]["code"] == "H"
    assert ad_contexts(body) == {"gender": ["male", "female"], "age": ["adult", "child"], "workflow": ["S"],
                                 "venue": ["IMP"]}
    assert codes_of(body["topic"][0]) == ["C"]

    body["title"] = "Minor surgery"
    body["extension"] = [e for e in body["extension"] if e["url"] != EXT + "activity-definition-level"]
    v2 = put(api, body)
    assert v2["meta"]["versionId"] == "2" and v2["title"] == "Minor surgery"
    # the level is 0..1 in the IG but always set in openIMIS: an update without it keeps the stored level
    assert ext_of(v2, "activity-definition-level")["valueCodeableConcept"]["coding"][0]["code"] == "H"
    assert stored(engine, medical_service, sid).level == "H"

    assert api.delete(f"ActivityDefinition/{sid}").status_code == 204
    assert api.get(f"ActivityDefinition/{sid}").status_code == 410
    history = get(api, f"ActivityDefinition/{sid}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]


def test_new_service_without_level_is_a_simple_service(api, engine):
    sid = created(api.post("ActivityDefinition", activity_definition("V1", "Visit")))["id"]
    assert stored(engine, medical_service, sid).level == "S"


def test_rights_guard_items_and_services(api, client, app):
    mid = created(api.post("Medication", medication("M1", "Item")))["id"]
    sid = created(api.post("ActivityDefinition", activity_definition("S1", "Service")))["id"]
    for user in (NOBODY, CLERK):  # the clerk has no medical register right (domain §4.4)
        other = Api(client, app.tokens.issue(user[0])[0])
        assert other.get(f"Medication/{mid}").status_code == 403
        assert other.get(f"ActivityDefinition/{sid}").status_code == 403
        assert other.get("Medication?code=M1").status_code == 403
        assert other.post("Medication", medication("M2", "Other")).status_code == 403
        assert other.post("ActivityDefinition", activity_definition("S2", "Other")).status_code == 403
        assert other.delete(f"Medication/{mid}").status_code == 403


# --- patient category and care type ------------------------------------------------------------------------


@pytest.mark.parametrize(("genders", "ages", "mask"), [
    (None, None, 15),
    (["male", "female"], ["adult", "child"], 15),
    (["male"], None, 1 | 4 | 8),
    (["female"], ["child"], 2 | 8),
    (None, ["adult"], 1 | 2 | 4),
])
def test_patient_category_bitmask(api, engine, genders, ages, mask):
    med = created(api.post("Medication", medication("M1", "Item", genders=genders, ages=ages)))
    assert stored(engine, medical_item, assert_valid(med)["id"]).patient_category == mask
    rendered = med_contexts(med)
    assert rendered["Gender"] == [g for g, bit in (("male", 1), ("female", 2)) if mask & bit]
    assert rendered["Age"] == [a for a, bit in (("adult", 4), ("child", 8)) if mask & bit]
    ad = created(api.post("ActivityDefinition", activity_definition("S1", "Svc", genders=genders, ages=ages)))
    assert stored(engine, medical_service, assert_valid(ad)["id"]).patient_category == mask
    assert ad_contexts(ad)["gender"] == rendered["Gender"] and ad_contexts(ad)["age"] == rendered["Age"]


@pytest.mark.parametrize(("care_type", "venues"), [("O", ["AMB"]), ("I", ["IMP"]), ("B", ["AMB", "IMP"])])
def test_care_type_is_the_venue(api, engine, care_type, venues):
    med = created(api.post("Medication", medication("M1", "Item", care_type=care_type)))
    assert stored(engine, medical_item, med["id"]).care_type == care_type
    assert med_contexts(med)["CareType"] == venues
    ad = created(api.post("ActivityDefinition", activity_definition("S1", "Svc", care_type=care_type)))
    assert stored(engine, medical_service, assert_valid(ad)["id"]).care_type == care_type
    assert ad_contexts(ad)["venue"] == venues


def test_item_without_usage_context_applies_to_everybody_in_both_venues(api, engine):
    med = created(api.post("Medication", medication("M1", "Item", care_type=None)))
    row = stored(engine, medical_item, med["id"])
    assert (row.patient_category, row.care_type) == (15, "B")
    assert med_contexts(med) == {"Gender": ["male", "female"], "Age": ["adult", "child"], "CareType": ["AMB", "IMP"]}


# --- rules ---------------------------------------------------------------------------------------------------


def test_codes_unique_among_current_items_and_services(api):
    first = created(api.post("Medication", medication("DUP", "One")))
    body = refused(api.post("Medication", medication("DUP", "Two")), 409, expression="Medication.identifier")
    assert "DUP" in body["issue"][0]["diagnostics"]
    other = created(api.post("Medication", medication("OTHER", "Other")))
    other["identifier"] = [ident("DUP")]
    refused(api.put(f"Medication/{other['id']}", other), 409, expression="Medication.identifier")
    # an item and a service may share a code (separate registers); a deleted item frees its code
    created(api.post("ActivityDefinition", activity_definition("DUP", "Service")))
    refused(api.post("ActivityDefinition", activity_definition("DUP", "Service 2")), 409,
            expression="ActivityDefinition.identifier")
    assert api.delete(f"Medication/{first['id']}").status_code == 204
    created(api.post("Medication", medication("DUP", "Three")))


@pytest.mark.parametrize(("value", "currency"), [(-1, "EUR"), (10.005, "EUR"), (1e17, "EUR"), (10, "USD")])
def test_price_is_a_non_negative_amount_in_the_scheme_currency(api, value, currency):
    med = medication("M1", "Item")
    med["extension"][0]["valueMoney"] = {"value": value, "currency": currency}
    refused(api.post("Medication", med), 422, expression="Medication.extension[unitPrice]")
    ad = activity_definition("S1", "Svc")
    ad["extension"][0]["valueMoney"] = {"value": value, "currency": currency}
    refused(api.post("ActivityDefinition", ad), 422, expression="ActivityDefinition.extension[unitPrice]")


def test_price_zero_and_without_currency_is_accepted(api):
    med = medication("M1", "Free item", unit_price=0)
    med["extension"][0]["valueMoney"].pop("currency")
    body = created(api.post("Medication", med))
    assert ext_of(body, "unit-price")["valueMoney"] == {"value": 0, "currency": "EUR"}


def _with_usage(med: dict[str, Any], name: str, code: str, system: str, codes: list[str]) -> dict[str, Any]:
    usage = ext_of(med, "medication-usage-context")
    usage["extension"].append({"url": name, "valueUsageContext": builders_medical.usage(code, system, codes)})
    return med


def test_invalid_medication_codes_are_refused_with_their_location(api):
    bad_type = medication("M1", "Item", item_type="X")
    refused(api.post("Medication", bad_type), 400, 422, expression="Medication.extension")
    bad_gender = medication("M1", "Item", care_type="O")
    _with_usage(bad_gender, "Gender", "gender", "http://hl7.org/fhir/administrative-gender", ["other"])
    refused(api.post("Medication", bad_gender), 400, 422, expression="Medication.extension")
    twice = medication("M1", "Item", care_type="O", genders=["male"])
    _with_usage(twice, "Gender", "gender", "http://hl7.org/fhir/administrative-gender", ["female"])
    refused(api.post("Medication", twice), 400, 422, expression="Medication.extension")
    bad_unit = medication("M1", "Item", frequency=2)
    ext_of(bad_unit, "medication-frequency")["valueTiming"]["repeat"]["periodUnit"] = "wk"
    refused(api.post("Medication", bad_unit), 400, 422, expression="Medication.extension")
    fractional = medication("M1", "Item", frequency=2)
    ext_of(fractional, "medication-frequency")["valueTiming"]["repeat"]["period"] = 1.5
    refused(api.post("Medication", fractional), 422, expression="Medication.extension[timing]")
    no_name = medication("M1", "Item")
    no_name["code"] = {"text": ""}
    refused(api.post("Medication", no_name), 400, 422, expression="Medication.code")
    long_code = medication("M" * 17, "Item")
    refused(api.post("Medication", long_code), 422, expression="Medication.identifier")
    no_price = medication("M1", "Item")
    no_price["extension"] = no_price["extension"][1:]
    refused(api.post("Medication", no_price), 400, expression="Medication.extension")
    assert ids(api, "Medication") == []


def test_invalid_service_codes_are_refused_with_their_location(api):
    cases: list[tuple[dict[str, Any], str]] = []
    wrong_topic = activity_definition("S1", "Svc")
    wrong_topic["topic"][0]["coding"][0]["code"] = "X"
    cases.append((wrong_topic, "ActivityDefinition.topic"))
    no_topic = activity_definition("S1", "Svc")
    del no_topic["topic"]
    cases.append((no_topic, "ActivityDefinition.topic"))
    wrong_level = activity_definition("S1", "Svc", level="Q")
    cases.append((wrong_level, "ActivityDefinition.extension"))
    wrong_venue = activity_definition("S1", "Svc")
    wrong_venue["useContext"][-1]["valueCodeableConcept"]["coding"][0]["code"] = "EMER"
    cases.append((wrong_venue, "ActivityDefinition.useContext"))
    wrong_category = activity_definition("S1", "Svc", category="Z")
    cases.append((wrong_category, "ActivityDefinition.useContext"))
    no_venue = activity_definition("S1", "Svc")
    no_venue["useContext"] = [u for _n, u in contexts(["male"], None, None)]
    cases.append((no_venue, "ActivityDefinition.useContext"))
    name_not_code = activity_definition("S1", "Svc")
    name_not_code["name"] = "S2"
    cases.append((name_not_code, "ActivityDefinition.name"))
    bad_frequency = activity_definition("S1", "Svc", frequency=-1)
    cases.append((bad_frequency, "ActivityDefinition.timingTiming"))
    for resource, expression in cases:
        refused(api.post("ActivityDefinition", resource), 400, 422, expression=expression)
    assert ids(api, "ActivityDefinition") == []


def test_a_refused_update_changes_nothing(api):
    med = created(api.post("Medication", medication("M1", "Item")))
    med["extension"][0]["valueMoney"]["value"] = -5
    refused(api.put(f"Medication/{med['id']}", med), 422)
    assert get(api, f"Medication/{med['id']}")["meta"]["versionId"] == "1"


# --- search --------------------------------------------------------------------------------------------------


@pytest.fixture
def register(api: Any) -> dict[str, str]:
    """Three items and three services, ids by local name."""
    out = {
        "aspirin": created(api.post("Medication", medication("ASP01", "Aspirine forte", item_type="D",
                                                             genders=["male"], care_type="O")))["id"],
        "bandage": created(api.post("Medication", medication("BAN01", "Bandage élastique", item_type="M",
                                                             ages=["child"], care_type="I")))["id"],
        "syringe": created(api.post("Medication", medication("SYR01", "Syringe", item_type="M")))["id"],
        "consult": created(api.post("ActivityDefinition", activity_definition(
            "C01", "Consultation générale", service_type="C", category="C", care_type="O")))["id"],
        "vaccine": created(api.post("ActivityDefinition", activity_definition(
            "P01", "Vaccination", service_type="P", genders=["female"], care_type="O")))["id"],
        "surgery": created(api.post("ActivityDefinition", activity_definition(
            "C02", "Surgery", service_type="C", category="S", ages=["adult"], care_type="I")))["id"],
    }
    return out


def found(api: Any, query: str, register: dict[str, str]) -> set[str]:
    by_id = {v: k for k, v in register.items()}
    return {by_id[i] for i in ids(api, query)}


@pytest.mark.parametrize(("query", "expected"), [
    ("Medication?identifier=ASP01", {"aspirin"}),
    ("Medication?identifier=Code|BAN01", {"bandage"}),
    ("Medication?code=SYR01", {"syringe"}),
    ("Medication?code=SYR01,ASP01", {"syringe", "aspirin"}),
    ("Medication?name=aspir", {"aspirin"}),
    ("Medication?name=BANDAGE elastique", {"bandage"}),
    ("Medication?name:contains=a", {"aspirin", "bandage"}),
    ("Medication?name:exact=Syringe", {"syringe"}),
    ("Medication?status=active", {"aspirin", "bandage", "syringe"}),
    ("Medication?status=inactive", set()),
    ("Medication?type=M", {"bandage", "syringe"}),
    (f"Medication?type={CS}medication-item-type|D", {"aspirin"}),
    ("Medication?context=female", {"bandage", "syringe"}),
    ("Medication?context=adult", {"aspirin", "syringe"}),
    ("Medication?context=IMP", {"bandage", "syringe"}),
    ("Medication?context:not=AMB", {"bandage"}),
    ("ActivityDefinition?identifier=C01", {"consult"}),
    ("ActivityDefinition?code=P01", {"vaccine"}),
    ("ActivityDefinition?name=c0", {"consult", "surgery"}),
    ("ActivityDefinition?title=consultation generale", {"consult"}),
    ("ActivityDefinition?title:contains=ion", {"consult", "vaccine"}),
    ("ActivityDefinition?status=active", {"consult", "vaccine", "surgery"}),
    ("ActivityDefinition?status:not=active", set()),
    ("ActivityDefinition?topic=C", {"consult", "surgery"}),
    (f"ActivityDefinition?topic={CS}activity-definition-service-type|P", {"vaccine"}),
    ("ActivityDefinition?context=S", {"surgery"}),
    ("ActivityDefinition?context=male", {"consult", "surgery"}),
    ("ActivityDefinition?context=child", {"consult", "vaccine"}),
    ("ActivityDefinition?context=AMB", {"consult", "vaccine"}),
])
def test_search_parameters(api, register, query, expected):
    assert found(api, query, register) == expected


def test_search_by_last_updated_and_id(api, register):
    vaccine = get(api, f"ActivityDefinition/{register['vaccine']}")
    stamp = vaccine["meta"]["lastUpdated"]
    assert found(api, f"ActivityDefinition?_lastUpdated=ge{stamp}", register) == {"vaccine", "surgery"}
    assert found(api, f"ActivityDefinition?_lastUpdated=lt{stamp}", register) == {"consult"}
    assert found(api, f"Medication?_id={register['syringe']}", register) == {"syringe"}


def test_sorts(api, register):
    def order(query: str) -> list[str]:
        by_id = {v: k for k, v in register.items()}
        return [by_id[i] for i in ids(api, query)]

    assert order("Medication?_sort=code") == ["aspirin", "bandage", "syringe"]
    assert order("Medication?_sort=-name") == ["syringe", "bandage", "aspirin"]
    assert order("ActivityDefinition?_sort=code") == ["consult", "surgery", "vaccine"]
    assert order("ActivityDefinition?_sort=-name") == ["vaccine", "surgery", "consult"]
    assert order("ActivityDefinition?_sort=title") == ["consult", "surgery", "vaccine"]
    assert order("ActivityDefinition?_sort=-_lastUpdated") == ["surgery", "vaccine", "consult"]
    assert order("Medication?_sort=_id")[0] in register


@pytest.mark.parametrize("query", [
    "Medication?type=X", "Medication?context=elderly", "ActivityDefinition?topic=Z",
    "ActivityDefinition?context=Q", "Medication?name=%3Cscript%3E",
])
def test_bad_search_values_are_400(api, query):
    refused(api.get(query), 400)
