"""Work that time alone makes due: a policy expires, or a member's coverage starts, without any write.

`Patient.active` and `Group.active` mean "has an active policy" (insuree.has_active_policy). Writes that change
coverage keep the flag and the stored versions current; this job catches what only the calendar changes — an
expiry date passing, an effective date arriving — and re-versions exactly the insurees (and their families) whose
flag flips, and the Contracts and Coverages of the active policies that expired (their `policy-status` /
`coverage-policy-status` read `expired` from then on: an expiry is never stored, `domain.policy.status_on`, but the
versions served are). It is idempotent: every worker of `hifhir serve` runs it at start and hourly, `hifhir jobs`
runs it once, and concurrent runs only find nothing left to do.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

from sqlalchemy import Connection, Engine, Exists, and_, exists, insert, or_, select, update

from hifhir.fhir.kind import WriteContext
from hifhir.store.db import transaction
from hifhir.store.tables import POLICY_ACTIVE, coverage, insuree, insuree_policy, is_current, job_run, policy

log = logging.getLogger("hifhir.jobs")
JOB_USER = "hifhir-jobs"  # user_name on the history rows the job writes
COVERAGE_JOB = "coverage-flags"


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


def start_job_clock(conn: Connection) -> None:
    """A database without insurees has no coverage flag to fix: its job clock starts today, so the first runs look
    only at what changes from now on (an existing database without a clock gets one full check instead)."""
    if conn.execute(select(job_run.c.name).where(job_run.c.name == COVERAGE_JOB)).first() is not None:
        return
    if conn.execute(select(insuree.c.pk).limit(1)).first() is None:
        conn.execute(insert(job_run).values(name=COVERAGE_JOB, last_day=date.today()))


def refresh_coverage_flags(engine: Engine, today: date | None = None) -> int:
    """Set has_active_policy where the calendar changed it and re-version those Patients and Groups; returns how
    many insurees changed. Only the insurees whose coverage window opened or closed since the last run are looked
    at (the first run ever checks everybody), so the hourly runs of every worker cost one indexed query."""
    today = today or date.today()
    with transaction(engine, write=True) as conn:
        last = conn.execute(select(job_run.c.last_day).where(job_run.c.name == COVERAGE_JOB)).scalar()
        if last is not None and last >= today:
            return 0
        candidates = select(insuree.c.pk)
        if last is not None:
            ip, since = insuree_policy, last - timedelta(days=1)
            candidates = select(ip.c.insuree_pk).where(is_current(ip), or_(
                and_(ip.c.expiry_date >= since, ip.c.expiry_date < today),
                and_(ip.c.effective_date >= since, ip.c.effective_date <= today)))
        expired = select(policy.c.pk, coverage.c.pk.label("coverage_pk")).outerjoin(
            coverage, and_(coverage.c.policy_pk == policy.c.pk, is_current(coverage))).where(
            is_current(policy), policy.c.status == POLICY_ACTIVE, policy.c.expiry_date < today)
        if last is not None:
            expired = expired.where(policy.c.expiry_date >= last - timedelta(days=1))
        expired_policies = conn.execute(expired).all()
        covered = covered_on(today)
        rows = conn.execute(select(insuree.c.pk, insuree.c.family_pk, covered.label("now_active")).where(
            insuree.c.pk.in_(candidates), is_current(insuree), insuree.c.has_active_policy != covered)).all()
        ctx = WriteContext(conn, JOB_USER)
        for p in expired_policies:
            ctx.mark("contract", int(p.pk))
            if p.coverage_pk is not None:
                ctx.mark("coverage", int(p.coverage_pk))
        if rows:
            for value in (True, False):
                pks = [r.pk for r in rows if bool(r.now_active) is value]
                for start in range(0, len(pks), 500):
                    conn.execute(update(insuree).where(insuree.c.pk.in_(pks[start:start + 500]))
                                 .values(has_active_policy=value))
            for row in rows:
                ctx.mark("patient", int(row.pk))
                if row.family_pk is not None:
                    ctx.mark("group", int(row.family_pk))
        if rows or expired_policies:
            ctx.flush()
        if last is None:
            conn.execute(insert(job_run).values(name=COVERAGE_JOB, last_day=today))
        else:
            conn.execute(update(job_run).where(job_run.c.name == COVERAGE_JOB).values(last_day=today))
    if rows or expired_policies:
        log.info("coverage flags refreshed for %d insurees; %d policies expired", len(rows), len(expired_policies))
    return len(rows)
