"""The CapabilityStatement, generated from what the registry really implements."""

from __future__ import annotations

import functools
from typing import Any

from hifhir import __version__
from hifhir.fhir.kind import IG
from hifhir.fhir.registry import TYPES

OPERATIONS = [
    {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
]


@functools.cache
def capability_statement(base_url: str) -> dict[str, Any]:
    resources = []
    for rtype in sorted(TYPES):
        kinds = TYPES[rtype]
        interactions = ["read", "vread", "search-type", "history-instance", "history-type"]
        if any(k.writable for k in kinds):
            interactions += ["create", "update", "delete"]
        params: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for p in kind.search_params.values():
                params.setdefault(p.name, {"name": p.name, "type": p.type,
                                           **({"documentation": p.documentation} if p.documentation else {})})
        resources.append({
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "supportedProfile": [k.profile for k in kinds],
            "interaction": [{"code": c} for c in sorted(interactions)],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": False,
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": sorted(params.values(), key=lambda p: p["name"]),
            "operation": OPERATIONS,
        })
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "hifhir",
        "kind": "instance",
        "instantiates": [f"{IG}/CapabilityStatement/openIMISCapabilityStatement"],
        "software": {"name": "hifhir", "version": __version__},
        "implementation": {"description": "hifhir FHIR R4 server (openIMIS IG)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "implementationGuide": [f"{IG}/ImplementationGuide/openimis.fhir.r4"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth"}]}],
                "description": "JWT bearer token from POST /api/api_fhir_r4/login/ or /api/login "
                               "({\"username\",\"password\"} → {\"token\",\"exp\"}).",
            },
            "resource": resources,
        }],
    }
