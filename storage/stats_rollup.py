"""The SQL that keeps the statistics rollups (migration 0013): triggers, fill and rebuild.

Four tables, one row per local period and key (unit, queue, kind, category); everything else is
a column of counts, so their size follows the calendar and the province, not the number of
reports:

* ``stats_received``, by the local month a report arrived (``month = yyyymm``): ``reports``;
  one ``st_<status>`` column per status (its current status); ``claim_<i>`` and ``ack_<i>``, the
  times to claim and to acknowledge (emergencies) in the buckets of :data:`BUCKET_EDGES`
  (medians are read from them);
* ``stats_resolved``, by the local month a report was resolved: ``reports``, ``subjects``
  (handled), ``assisted`` (citizen-assisted arrests) and one ``oc_<outcome>`` column per outcome;
* ``stats_received_daily`` and ``stats_resolved_daily``, the same by local day (``day =
  yyyymmdd``), without the duration buckets: what a view by day reads (the month by day).

Each report also counts in the monthly tables' row for its whole year, ``month = yyyy00``, so
that a year or several read one row per key and year, not twelve (readers of months exclude
``month % 100 = 0``; see :func:`admin.stats.queries.month_keys`).

Days, months and years are local to one :class:`Zone`, written into the expressions (so into
the triggers) and recorded in ``stats_rollup_state``; the service re-creates the triggers and
rebuilds the tables when ``TINBAO_TIMEZONE`` names another (:mod:`admin.stats.maintenance`).
PostgreSQL converts with the zone's name (its own time-zone database, daylight saving
included); SQLite has no time-zone database, so there the zone must keep one offset from UTC
(Vietnam's +07:00 has since 1975), added as ``'+420 minutes'``.

The same expressions serve the triggers on ``reports`` (one row's contribution, added or taken
away) and the fill from the stored reports (summed), so a rebuild and the triggers agree by
construction; ``tests/test_stats_rollup.py`` checks both against a recount in Python
(:mod:`admin.stats.check`). A change to these statements or columns needs a migration that
re-creates the triggers (and a frozen copy of this module for the older one, as
:mod:`storage.stats_rollup_0012`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Upper edges (seconds) of the duration buckets; the last bucket is open.
BUCKET_EDGES = (
    30, 60, 120, 180, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800,
    14400, 21600, 28800, 43200, 64800, 86400, 129600, 172800, 259200, 432000, 604800,
    1209600, 2592000,
)  # fmt: skip
BUCKETS = len(BUCKET_EDGES) + 1

#: Frozen copies of :data:`handlers.domain.STATUSES` and ``OUTCOMES`` (a new value needs a
#: migration adding its column; until then it counts in ``reports`` only).
STATUSES = ("new", "assigned", "in_progress", "needs_info", "acknowledged", "resolved", "rejected")
OUTCOMES = (
    "clarified",
    "handled",
    "not_confirmed",
    "false_report",
    "duplicate",
    "out_of_scope",
)

#: The key columns after the period (``month`` or ``day``).
DIMS = ("unit_code", "queue_key", "kind", "category")
DIMENSIONS = ("month", *DIMS)
STATUS_COLUMNS = tuple(f"st_{s}" for s in STATUSES)
OUTCOME_COLUMNS = tuple(f"oc_{o}" for o in OUTCOMES)
CLAIM_COLUMNS = tuple(f"claim_{i}" for i in range(BUCKETS))
ACK_COLUMNS = tuple(f"ack_{i}" for i in range(BUCKETS))
RESOLVED_MEASURES = ("reports", "subjects", "assisted", *OUTCOME_COLUMNS)
#: Count columns of each table.
MEASURES: dict[str, tuple[str, ...]] = {
    "stats_received": ("reports", *STATUS_COLUMNS, *CLAIM_COLUMNS, *ACK_COLUMNS),
    "stats_resolved": RESOLVED_MEASURES,
    "stats_received_daily": ("reports", *STATUS_COLUMNS),
    "stats_resolved_daily": RESOLVED_MEASURES,
}
#: The period column of each table.
PERIOD: dict[str, str] = {
    "stats_received": "month",
    "stats_resolved": "month",
    "stats_received_daily": "day",
    "stats_resolved_daily": "day",
}
ROLLUP_TABLES = tuple(MEASURES)
MONTHLY_TABLES = ("stats_received", "stats_resolved")
DAILY_TABLES = ("stats_received_daily", "stats_resolved_daily")
#: One row: the zone the rollups are counted in (migration 0013).
STATE_TABLE = "stats_rollup_state"

COUNTED = (
    "created_at",
    "unit_code",
    "queue_key",
    "kind",
    "category",
    "status",
    "outcome",
    "subjects_handled",
    "citizen_assisted_arrest",
    "resolved_at",
    "claimed_at",
    "acknowledged_at",
)
TRIGGERS = ("stats_rollup_insert", "stats_rollup_delete", "stats_rollup_update")

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")


@dataclass(frozen=True, slots=True)
class Zone:
    """The zone the rollups count local days, months and years in."""

    #: Its IANA name (``Asia/Ho_Chi_Minh``): what PostgreSQL converts with.
    name: str
    #: Its offset from UTC in minutes when that never changes (no daylight saving, no change of
    #: offset over the years that matter); ``None`` otherwise. What SQLite adds.
    minutes: int | None

    def __post_init__(self) -> None:
        if not _ZONE_NAME.fullmatch(self.name):  # it is written into SQL text
            raise ValueError(f"not a time-zone name: {self.name!r}")

    def shift(self, dialect: str) -> str:
        """How ``dialect`` turns a UTC moment into this zone's wall clock: a PostgreSQL zone
        name, or a SQLite date modifier."""
        if dialect == "postgresql":
            return self.name
        if self.minutes is None:
            raise ValueError(
                f"the time zone {self.name} changes its offset from UTC (daylight saving): "
                "SQLite can only count statistics in a zone with one fixed offset; use "
                "PostgreSQL, or a zone such as Asia/Ho_Chi_Minh, Asia/Bangkok or UTC"
            )
        return f"{self.minutes:+d} minutes"


#: Vietnam: UTC+07:00 since 1975. What migration 0013 builds with.
DEFAULT_ZONE = Zone("Asia/Ho_Chi_Minh", 420)

_PATTERNS = {
    "postgresql": {"day": "YYYYMMDD", "month": "YYYYMM", "year": "YYYY"},
    "sqlite": {"day": "%Y%m%d", "month": "%Y%m", "year": "%Y"},
}


def period_expr(dialect: str, zone: Zone, column: str, grain: str) -> str:
    """The local ``day`` (``yyyymmdd``), ``month`` (``yyyymm``) or ``year`` (``yyyy00``) of
    ``column`` in ``zone``."""
    pattern = _PATTERNS["postgresql" if dialect == "postgresql" else "sqlite"][grain]
    if dialect == "postgresql":
        value = (
            f"CAST(to_char({column} AT TIME ZONE '{zone.shift(dialect)}', '{pattern}') AS integer)"
        )
    else:
        value = f"CAST(strftime('{pattern}', {column}, '{zone.shift(dialect)}') AS INTEGER)"
    return f"{value} * 100" if grain == "year" else value


def seconds_expr(dialect: str, start: str, end: str) -> str:
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def bucket_expr(dialect: str, r: str, column: str, only_emergencies: bool) -> str:
    """The bucket of ``created_at`` → ``column`` of row ``r``; -1 when not measured."""
    seconds = seconds_expr(dialect, f"{r}.created_at", f"{r}.{column}")
    whens = " ".join(f"WHEN {seconds} < {edge} THEN {i}" for i, edge in enumerate(BUCKET_EDGES))
    extra = f" OR {r}.kind <> 'emergency'" if only_emergencies else ""
    return (
        f"CASE WHEN {r}.{column} IS NULL OR {r}.created_at IS NULL{extra} THEN -1 "
        f"{whens} ELSE {len(BUCKET_EDGES)} END"
    )


def _flag(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


def _measures(r: str, b: str) -> dict[str, str]:
    """Every count column's contribution of row ``r`` (``b.cb``/``b.ab``: its buckets)."""
    out = {
        **{c: _flag(f"{r}.status = '{s}'") for c, s in zip(STATUS_COLUMNS, STATUSES, strict=True)},
        **{c: _flag(f"{b}.cb = {i}") for i, c in enumerate(CLAIM_COLUMNS)},
        **{c: _flag(f"{b}.ab = {i}") for i, c in enumerate(ACK_COLUMNS)},
        "subjects": f"coalesce({r}.subjects_handled, 0)",
        "assisted": _flag(f"{r}.citizen_assisted_arrest"),
        **{
            c: _flag(f"{r}.outcome = '{o}'")
            for c, o in zip(OUTCOME_COLUMNS, OUTCOMES, strict=True)
        },
    }
    out["reports"] = "1"
    return out


def parts(
    dialect: str,
    zone: Zone,
    r: str,
    b: str,
    tables: tuple[str, ...] = ROLLUP_TABLES,
    years: bool = True,
) -> list[tuple[str, list[str], list[str], str]]:
    """Per table and grain: name, key expressions of row ``r``, measure expressions (in the
    order of :data:`MEASURES`; ``b.cb`` and ``b.ab`` are the claim and acknowledge buckets),
    where. A monthly table has two (its month's row and, with ``years``, its year's)."""
    values = [
        f"coalesce({r}.unit_code, '')",
        f"coalesce({r}.queue_key, '')",
        f"{r}.kind",
        f"coalesce({r}.category, '')",
    ]
    measures = _measures(r, b)
    out = []
    for table in tables:
        if table.startswith("stats_received"):
            moment, where = f"{r}.created_at", f"{r}.created_at IS NOT NULL"
        else:
            moment = f"{r}.resolved_at"
            where = f"{r}.status = 'resolved' AND {r}.resolved_at IS NOT NULL"
        grains = ("day",) if PERIOD[table] == "day" else ("month", "year")[: 2 if years else 1]
        for grain in grains:
            key = period_expr(dialect, zone, moment, grain)
            out.append((table, [key, *values], [measures[m] for m in MEASURES[table]], where))
    return out


def buckets_select(dialect: str, r: str) -> str:
    """``cb`` and ``ab`` of row ``r``, computed once per row."""
    return (
        f"{bucket_expr(dialect, r, 'claimed_at', False)} AS cb, "
        f"{bucket_expr(dialect, r, 'acknowledged_at', True)} AS ab"
    )


def fence(dialect: str) -> str:
    """Ends a subquery that must stay one (not be merged into the query around it): otherwise
    both databases copy ``cb``/``ab``'s 28-way CASE into each of the 58 bucket columns that test
    it, and a fill ran at 0.6 ms a report instead of a few µs."""
    return " OFFSET 0" if dialect == "postgresql" else " LIMIT -1 OFFSET 0"


def upsert(table: str, select: str) -> str:
    measures = MEASURES[table]
    keys = (PERIOD[table], *DIMS)
    sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in measures)
    return (
        f"INSERT INTO {table} ({', '.join([*keys, *measures])}) {select} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    )


def statements(dialect: str, zone: Zone, row: str, sign: str) -> list[str]:
    """Upserts adding ``sign`` times the contribution of ``row`` (``NEW`` or ``OLD``)."""
    out = []
    for table, keys, measures, where in parts(dialect, zone, row, "b"):
        signed = [f"{sign} * {m}" for m in measures]
        source = f"(SELECT {buckets_select(dialect, row)}{fence(dialect)}) AS b"
        select = f"SELECT {', '.join([*keys, *signed])} FROM {source} WHERE {where}"  # noqa: S608
        out.append(upsert(table, select))
    return out


def fill(dialect: str, zone: Zone, tables: tuple[str, ...] = ROLLUP_TABLES) -> list[str]:
    """The same contributions summed over the reports already stored, into empty ``tables``.

    Three passes over ``reports``: received by month (with the duration buckets), received by
    day, resolved by day. The rest is summed from those rows, which hold the same counts: a
    resolved month from its days (``yyyymmdd // 100``), a year from its months (``yyyymm //
    100 * 100``); the periods come from the same expressions in the same zone, so they agree.
    """
    out = []
    counted = ", ".join(COUNTED)
    for table in tables:
        derived = table == "stats_resolved" and "stats_resolved_daily" in tables
        if derived:
            continue  # from the days, after them
        columns = counted
        if table == "stats_received":  # the buckets, computed once per report
            columns = f"{counted}, {buckets_select(dialect, 'reports')}"
        source = f"(SELECT {columns} FROM reports{fence(dialect)}) AS r"  # noqa: S608
        # The years' rows are summed from the months', below.
        for name, keys, measures, where in parts(dialect, zone, "r", "r", (table,), years=False):
            aliased = ", ".join(f"{v} AS k{i}" for i, v in enumerate(keys))
            measured = ", ".join(f"{m} AS m{j}" for j, m in enumerate(measures))
            grouped = ", ".join(f"k{i}" for i in range(len(keys)))
            sums = ", ".join(f"sum(m{j})" for j in range(len(measures)))
            select = (
                f"SELECT {grouped}, {sums} FROM (SELECT {aliased}, {measured} "  # noqa: S608
                f"FROM {source} WHERE {where}) AS x GROUP BY {grouped}"
            )
            out.append(upsert(name, select))
    if "stats_resolved" in tables and "stats_resolved_daily" in tables:
        out.append(_summed("stats_resolved", "stats_resolved_daily", "day / 100", "day"))
    for table in MONTHLY_TABLES:
        if table in tables:
            out.append(_summed(table, table, "month / 100 * 100", "month", "month % 100 <> 0"))
    return out


def _summed(table: str, source: str, period: str, column: str, where: str = "1 = 1") -> str:
    """``table``'s rows summed from ``source``'s, the period as ``period`` of ``column``."""
    measures = MEASURES[table]
    sums = ", ".join(f"sum({m})" for m in measures)
    dims = ", ".join(DIMS)
    select = (
        f"SELECT {period} AS p, {dims}, {sums} FROM {source} "  # noqa: S608 (no input)
        f"WHERE {where} GROUP BY {period}, {dims}"
    )
    return upsert(table, select)


def changed(dialect: str) -> str:
    op_ = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{c} {op_} NEW.{c}" for c in COUNTED)


def trigger_statements(dialect: str, zone: Zone) -> list[str]:
    """CREATE statements of the triggers (and PostgreSQL's trigger function)."""
    if dialect == "postgresql":
        old = ";\n    ".join(statements(dialect, zone, "OLD", "-1"))
        new = ";\n    ".join(statements(dialect, zone, "NEW", "1"))
        return [
            "CREATE FUNCTION stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            f"  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n    {old};\n  END IF;\n"
            f"  IF TG_OP IN ('UPDATE', 'INSERT') THEN\n    {new};\n  END IF;\n"
            "  RETURN NULL;\n"
            "END $$",
            "CREATE TRIGGER stats_rollup_insert AFTER INSERT OR DELETE ON reports "
            "FOR EACH ROW EXECUTE FUNCTION stats_rollup()",
            "CREATE TRIGGER stats_rollup_update AFTER UPDATE ON reports FOR EACH ROW "
            f"WHEN ({changed(dialect)}) EXECUTE FUNCTION stats_rollup()",
        ]
    body_new = "".join(s + ";\n" for s in statements(dialect, zone, "NEW", "1"))
    body_old = "".join(s + ";\n" for s in statements(dialect, zone, "OLD", "-1"))
    return [
        f"CREATE TRIGGER stats_rollup_insert AFTER INSERT ON reports BEGIN\n{body_new}END",
        f"CREATE TRIGGER stats_rollup_delete AFTER DELETE ON reports BEGIN\n{body_old}END",
        "CREATE TRIGGER stats_rollup_update AFTER UPDATE ON reports "
        f"WHEN {changed(dialect)} BEGIN\n{body_old}{body_new}END",
    ]


def drop_trigger_statements(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            "DROP TRIGGER IF EXISTS stats_rollup_insert ON reports",
            "DROP TRIGGER IF EXISTS stats_rollup_update ON reports",
            "DROP FUNCTION IF EXISTS stats_rollup()",
        ]
    return [f"DROP TRIGGER IF EXISTS {name}" for name in TRIGGERS]


def rebuild_statements(dialect: str, zone: Zone) -> list[str]:
    """Empty the rollups and fill them again from the reports (one transaction, by the caller)."""
    return [f"DELETE FROM {table}" for table in ROLLUP_TABLES] + fill(dialect, zone)  # noqa: S608


def rezone_statements(dialect: str, zone: Zone) -> list[str]:
    """Count in ``zone`` from now on: the triggers re-created, the rollups rebuilt, the zone
    recorded (one transaction, by the caller; on PostgreSQL with the reports locked)."""
    minutes = "NULL" if zone.minutes is None else str(zone.minutes)
    return [
        *drop_trigger_statements(dialect),
        *trigger_statements(dialect, zone),
        *rebuild_statements(dialect, zone),
        f"UPDATE {STATE_TABLE} SET zone = '{zone.name}', minutes = {minutes}",  # noqa: S608
    ]
