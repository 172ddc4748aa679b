"""Subscriptions and notifications (FHIR R4 rest-hook; IG row 25; DESIGN.md "notifications"; issue 6).

* fhir/profiles/subscription.py — the Subscription resource: criteria, channel, headers never shown back, owner,
  status, rights.
* criteria.py — a subscription's `Type?parameters`, parsed and evaluated by the search engine.
* matching.py — in every writing transaction (a flush observer): which subscriptions a change notifies; one outbox
  row (topic `notify`) per match, committed or rolled back with the change.
* delivery.py — the outbox handler: the POST, signed, with retries, `error` and recovery.
* endpoints.py, transport.py — the allow-list (no internal addresses unless configured) and the pinned connection.

Nothing is lost: a committed change has its outbox rows; a worker killed mid-delivery leaves them pending (lease)
and they are delivered after a restart, at least once, each with the same `X-Hifhir-Delivery` id.
"""
