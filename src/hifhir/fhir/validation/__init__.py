"""Building blocks of hifhir.fhir.validate (schema layer, profile plans, terminology)."""
