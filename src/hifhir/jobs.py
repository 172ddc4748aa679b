"""Work that time alone makes due: a policy expires, or a member's coverage starts, without any write.

`Patient.active` and `Group.active` mean "has an active policy" (insuree.has_active_policy). Writes that change
coverage keep the flag and the stored versions current; this job catches what only the calendar changes — an
expiry date passing, an effective date arriving — and re-versions exactly the insurees (and their families) whose
flag flips. It is idempotent: every worker of `hifhir serve` runs it at start and hourly, `hifhir jobs` runs it
once, and concurrent runs only find nothing left to do.
"""

from __future__ import annotations

import logging
from datetime import date

from sqlalchemy import Engine, Exists, exists, select, update

from hifhir.fhir.kind import WriteContext
from hifhir.store.db import transaction
from hifhir.store.tables import POLICY_ACTIVE, insuree, insuree_policy, is_current, policy

log = logging.getLogger("hifhir.jobs")
JOB_USER = "hifhir-jobs"  # user_name on the history rows the job writes


def covered_on(today: date) -> Exists:
    """SQL: the insuree (table `insuree`) has a current policy that is active and covers them today."""
    ip, p = insuree_policy, policy
    return exists(
        select(ip.c.pk).join(p, p.c.pk == ip.c.policy_pk).where(
            ip.c.insuree_pk == insuree.c.pk, is_current(ip), is_current(p),
            p.c.status == POLICY_ACTIVE, p.c.expiry_date >= today,
            ip.c.effective_date.is_not(None), ip.c.effective_date <= today, ip.c.expiry_date >= today,
        )
    )


def refresh_coverage_flags(engine: Engine, today: date | None = None) -> int:
    """Set has_active_policy where the calendar changed it and re-version those Patients and Groups; returns how
    many insurees changed."""
    today = today or date.today()
    covered = covered_on(today)
    stale = select(insuree.c.pk, insuree.c.family_pk, covered.label("now_active")).where(
        is_current(insuree), insuree.c.has_active_policy != covered)
    with transaction(engine, write=True) as conn:
        rows = conn.execute(stale).all()
        if not rows:
            return 0
        ctx = WriteContext(conn, JOB_USER)
        for value in (True, False):
            pks = [r.pk for r in rows if bool(r.now_active) is value]
            for start in range(0, len(pks), 500):
                conn.execute(update(insuree).where(insuree.c.pk.in_(pks[start:start + 500]))
                             .values(has_active_policy=value))
        for row in rows:
            ctx.mark("patient", int(row.pk))
            if row.family_pk is not None:
                ctx.mark("group", int(row.family_pk))
        ctx.flush()
    log.info("coverage flags refreshed for %d insurees", len(rows))
    return len(rows)

