"""The audit trail (FHIR R4 AuditEvent): every write, every read or search of personal data, every login.

`events` decides what a request is (action, restful interaction, outcome) and whether it is audited; `sink`
writes the records in batches off the request path; `fhir` serves them as read-only AuditEvent resources.
"""
