"""The insuree photo: sent as data (the IG's POST/PUT slice), read back as a URL (the GET slice)."""

import base64
import hashlib

from tests.builders import location, patient

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def _village(api):
    r = api.post("Location", location("R9", "Region9", "R")).json()
    d = api.post("Location", location("R9D1", "District9", "D", r["id"])).json()
    w = api.post("Location", location("R9D1W1", "Ward9", "W", d["id"])).json()
    return api.post("Location", location("R9D1W1V1", "Village9", "V", w["id"])).json()["id"]


def test_photo_data_is_stored_and_served_at_the_url_the_patient_gives(api):
    body = patient("555000111", "Photo", "Graph", _village(api))
    body["photo"] = [{"contentType": "image/png", "data": base64.b64encode(PNG).decode(), "title": "face",
                      "creation": "2026-01-02", "hash": base64.b64encode(hashlib.sha1(PNG).digest()).decode()}]
    created = api.post("Patient", body)
    assert created.status_code == 201, created.text
    photo = created.json()["photo"][0]
    assert "data" not in photo
    assert photo["size"] == len(PNG)
    assert photo["url"].endswith(f"/Patient/{created.json()['id']}/$photo")
    served = api.get(f"Patient/{created.json()['id']}/$photo")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("image/png")
    assert served.content == PNG


def test_photo_of_a_patient_without_one_is_404(api):
    created = api.post("Patient", patient("555000112", "No", "Photo", _village(api))).json()
    assert api.get(f"Patient/{created['id']}/$photo").status_code == 404
