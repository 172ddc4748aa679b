"""Business rules of openIMIS entities (no HTTP, no FHIR JSON)."""
