"""The CapabilityStatement, generated from what the registry really implements."""

from __future__ import annotations

import functools
from typing import Any

from hifhir import __version__
from hifhir.fhir.conformance import CATALOG_PARAMS
from hifhir.fhir.kind import IG
from hifhir.fhir.registry import TYPES

OPERATIONS = [
    {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
]
_OPERATION_DEFINITION = "http://hl7.org/fhir/OperationDefinition/"
# Definitional resources built on the fly (fhir/terminology.py, fhir/conformance.py): read and search; the code
# lists among the CodeSystems also take PUT; the terminology operations at type and instance level.
_DEFINITIONAL = {
    "CodeSystem": (["read", "search-type", "update"], ["lookup", "validate-code"]),
    "ValueSet": (["read", "search-type"], ["expand", "validate-code"]),
    "StructureDefinition": (["read", "search-type"], []),
    "ImplementationGuide": (["read", "search-type"], []),
}
_DEFINITIONAL_DOC = {
    "CodeSystem": "The IG's CodeSystems; the openIMIS code lists (education, profession, identification type, "
                  "relationship, family type, confirmation type, HF legal form and level, PH legal form and "
                  "activity, diagnoses) are served live from configuration and can be replaced with PUT "
                  "(rights 131001 for diagnoses, 131303 for the others); medical-item and medical-service list the "
                  "current items and services.",
    "ValueSet": "The IG's ValueSets, plus items-pricelist / services-pricelist (every current price list) and "
                "items-pricelist-<health facility id> / services-pricelist-<health facility id> (a facility's "
                "list, with effective prices).",
    "StructureDefinition": "The IG's profiles and extensions, as the server validates against them.",
    "ImplementationGuide": "openimis.fhir.r4 1.0.0.",
}


def _definitional_resources() -> list[dict[str, Any]]:
    out = []
    for rtype, (interactions, operations) in _DEFINITIONAL.items():
        params = [{"name": p.name, "type": p.type, "documentation": p.documentation}
                  for p in sorted(CATALOG_PARAMS[rtype].values(), key=lambda p: p.name)]
        resource: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "documentation": _DEFINITIONAL_DOC[rtype],
            "interaction": [{"code": c} for c in sorted(interactions)],
            "versioning": "versioned",
            "readHistory": False,
            "updateCreate": False,
            "searchParam": params,
        }
        if operations:
            resource["operation"] = [{"name": op, "definition": f"{_OPERATION_DEFINITION}{rtype}-{op}"}
                                     for op in operations]
        out.append(resource)
    return out


def _includes() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """`_include` values each type accepts (its own reference parameters) and `_revinclude` values (the reference
    parameters of other types that point at it), as `Source:param`."""
    from hifhir.fhir.registry import KINDS

    include: dict[str, set[str]] = {}
    revinclude: dict[str, set[str]] = {}
    for rtype, kinds in TYPES.items():
        for kind in kinds:
            for p in kind.search_params.values():
                for path in p.paths:
                    include.setdefault(rtype, set()).add(f"{rtype}:{p.name}")
                    target_type = KINDS[path.target_kind].resource_type
                    revinclude.setdefault(target_type, set()).add(f"{rtype}:{p.name}")
    return include, revinclude


_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def _server_root(base_url: str) -> str:
    """`http://host/fhir` (or the openIMIS alias) → `http://host`, where the token endpoint lives."""
    for prefix in ("/api/api_fhir_r4", "/fhir"):
        if base_url.endswith(prefix):
            return base_url[:-len(prefix)]
    return base_url


@functools.cache
def capability_statement(base_url: str) -> dict[str, Any]:
    resources = []
    include, revinclude = _includes()
    for rtype in sorted(TYPES):
        kinds = TYPES[rtype]
        interactions = ["read", "vread", "search-type", "history-instance", "history-type"]
        if any(k.writable and k.creatable for k in kinds):
            interactions.append("create")
        if any(k.writable and k.updatable for k in kinds):
            interactions.append("update")
        if any(k.writable and k.deletable for k in kinds):
            interactions.append("delete")
        params: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for p in kind.search_params.values():
                params.setdefault(p.name, {"name": p.name, "type": p.type,
                                           **({"documentation": p.documentation} if p.documentation else {})})
        resource: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "supportedProfile": [k.profile for k in kinds],
            "interaction": [{"code": c} for c in sorted(interactions)],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": any(k.writable and k.creatable and k.updatable for k in kinds),
            "conditionalCreate": any(k.writable and k.creatable for k in kinds),
            "conditionalUpdate": any(k.writable and k.updatable for k in kinds),
            "conditionalDelete": "not-supported",
            "searchInclude": sorted(include.get(rtype, ())),
            "searchRevInclude": sorted(revinclude.get(rtype, ())),
            "searchParam": sorted(params.values(), key=lambda p: p["name"]),
            "operation": OPERATIONS,
        }
        resources.append({k: v for k, v in resource.items() if v != []})  # FHIR JSON has no empty arrays
    resources.extend(_definitional_resources())
    from hifhir.audit.fhir import capability_resource

    resources.append(capability_resource())
    resources.sort(key=lambda r: r["type"])
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
                "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                               "extension": [{"url": "token", "valueUri": _server_root(base_url) + "/oauth/token"}]}],
                "service": [{"coding": [{"system": _SECURITY_SERVICE, "code": "SMART-on-FHIR"}]},
                            {"coding": [{"system": _SECURITY_SERVICE, "code": "OAuth"}]}],
                "description": "Users: JWT bearer token from POST /api/api_fhir_r4/login/ or /api/login "
                               "({\"username\",\"password\"} → {\"token\",\"exp\"}). System clients: OAuth2 "
                               "client credentials at /oauth/token (client secret, or a JWT assertion signed RS384 "
                               "or ES384 as SMART Backend Services do) with SMART system scopes (system/Patient.read, "
                               "system/*.rs, …); see /.well-known/smart-configuration. Every interaction needs "
                               "an openIMIS right (the rights matrix: `hifhir rights`, README \"Rights\"); a "
                               "system client also needs a scope allowing it.",
            },
            "documentation": "Search: chained reference parameters up to 3 levels (`group.identifier`, "
                             "`general-practitioner:Organization.name`), reverse chains (`_has`), `_include` and "
                             "`_revinclude` with `:iterate`, keyset paging. Delta sync: every Bundle's "
                             "meta.lastUpdated is the sync point to resume from (`_history?_since=`).",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }
