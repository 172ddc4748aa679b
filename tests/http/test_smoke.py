from tests.builders import location, patient


def test_create_read_location_hierarchy_and_patient(api):
    r = api.post("Location", location("R1", "Ultha", "R"))
    assert r.status_code == 201, r.text
    region = r.json()
    d = api.post("Location", location("R1D1", "Rapta", "D", region["id"])).json()
    w = api.post("Location", location("R1D1M1", "Jamu", "W", d["id"])).json()
    v = api.post("Location", location("R1D1M1V1", "Jamula", "V", w["id"])).json()
    p = api.post("Patient", patient("123456789", "Doe", "John", v["id"]))
    assert p.status_code == 201, p.text
    body = p.json()
    assert body["address"][0]["district"] == "Rapta"
    got = api.get(f"Patient/{body['id']}")
    assert got.status_code == 200
    assert got.headers["etag"] == 'W/"1"'
    s = api.get("Patient?family=do")
    assert s.status_code == 200, s.text
    assert len(s.json()["entry"]) == 1
