"""The openIMIS system roles and their default rights (reference/openimis-domain.md §4.2, §4.4), and keeping a
database's system roles up to date with them. What each right allows through the API: auth/matrix.py."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from hifhir.auth.users import ensure_role
from hifhir.store.tables import role_right


def _span(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# The master data a point of service synchronises before it enrols or claims (products, health facilities,
# medical services and items, locations). openIMIS hands these registers to its officers' and claim administrators'
# mobile apps through the master-data extract without checking a right; hifhir checks the "find" rights, so it
# grants them to those two roles (a deviation from domain §4.4, which lists no register rights for them).
MASTER_DATA_FIND = [121001, 121101, 121401, 122101, 121901]

# Invoices, bills and their payments (155xxx, 156xxx): domain §4.4 gives them to the IMIS Administrator only (module
# migrations), but recording and reconciling payments is the accountant's job (§4.4 "in practice"), so the
# Accountant gets the search/create/update/delete rights of invoices, bills and both kinds of payments.
FINANCE = [*_span(155101, 155104), *_span(155201, 155204), *_span(156101, 156104), *_span(156201, 156204)]

SYSTEM_ROLES: list[tuple[str, int, list[int]]] = [
    ("Enrolment Officer", 1,
     _span(101001, 101004) + _span(101101, 101105) + _span(101201, 101205) + _span(101301, 101304)
     + [131200, 131201, 121801, 121501, *MASTER_DATA_FIND]),
    ("Manager", 2, [101105, 131201, 131202, 131203, 131208]),
    ("Accountant", 4,
     [101001, 101101, 101105, 101201, 101301, *_span(101401, 101404), *_span(111101, 111103),
      *_span(131204, 131206), *_span(131210, 131222), 131401, 121901, *FINANCE]),
    ("Clerk", 8,
     _span(101001, 101004) + _span(101101, 101105) + _span(101201, 101205) + _span(101301, 101304) + [121901]),
    ("Medical Officer", 16, [111001, 111008, 111009, 111010, 111011, 131223]),
    ("Scheme Administrator", 32,
     [101105, *_span(121001, 121005), *_span(121101, 121104), *_span(121201, 121205), *_span(121301, 121305),
      *_span(121401, 121404), *_span(121501, 121504), *_span(121601, 121604), *_span(121801, 121804),
      *_span(122101, 122104), *_span(131001, 131004), *_span(131101, 131107), 131209,
      121901]),  # locations: the facilities and products it registers name their district/region
    ("IMIS Administrator", 64,
     [101105, *_span(121701, 121704), *_span(121901, 121906), *_span(122000, 122005), 131005, 131006, 131207,
      *_span(131301, 131304), 111012, *_span(150101, 150104), *_span(152101, 152108), *_span(158001, 158004)]),
    ("Receptionist", 128, [101001, 101101, 101105, 101201, 121901]),
    ("Claim Administrator", 256,
     [101001, 101101, 101105, 101201, 111001, 111002, 111004, 111005, 111006, 111007, 111012, 121901, 152108,
      152109, 121601, *MASTER_DATA_FIND]),
    ("Claim Contributor", 512, [111001, 111002, 111005]),
    ("HF Administrator", 524288, [*_span(121701, 121704), 131101, 131103, *_span(131301, 131304)]),
    ("Offline Administrator", 1048576, [*_span(121701, 121704), 131101, 131103, *_span(131301, 131304)]),
]


def converge_system_roles(conn: Connection) -> None:
    """Create the system roles, and give existing ones the default rights they lack: a database made by an older
    hifhir gets the rights added since. Rights a role holds beyond the defaults are kept."""
    for name, flag, rights in SYSTEM_ROLES:
        pk = ensure_role(conn, name, flag, rights)
        held = set(conn.execute(select(role_right.c.right_code).where(role_right.c.role_pk == pk)).scalars())
        missing = sorted(set(rights) - held)
        if missing:
            conn.execute(insert(role_right), [{"role_pk": pk, "right_code": r} for r in missing])
