"""Frozen: the SQL of migration 0012's rollups (monthly and yearly rows, Vietnam's time fixed in
the expressions). Migration 0013 replaced it with :mod:`storage.stats_rollup` (daily rows, the
configured zone); this copy stays so that 0012 (and 0013's downgrade) keep building the schema
they built.

The SQL that keeps the statistics rollups (migration 0011): triggers, fill and rebuild.

Two tables, one row per local calendar month (``yyyymm``, Vietnam's time), unit, queue, kind and
category; everything else is a column of counts, so a year of a province is about 10,000 rows
per table whatever the number of reports. Each report also counts in a row for its whole year,
``month = yyyy00``, so that a year or several read one row per key and year, not twelve (readers
of months exclude ``month % 100 = 0``; see :func:`admin.stats.queries.month_keys`):

* ``stats_received``, by the month a report arrived: ``reports``; one ``st_<status>`` column per
  status (its current status); ``claim_<i>`` and ``ack_<i>``, the times to claim and to
  acknowledge (emergencies) in the buckets of :data:`BUCKET_EDGES` (medians are read from them);
* ``stats_resolved``, by the month a report was resolved: ``reports``, ``subjects`` (handled),
  ``assisted`` (citizen-assisted arrests) and one ``oc_<outcome>`` column per outcome.

The same expressions serve the triggers on ``reports`` (one row's contribution, added or taken
away) and the fill from the stored reports (summed), so a rebuild and the triggers agree by
construction; ``tests/test_stats_rollup.py`` checks both against a recount in Python
(:mod:`admin.stats.check`). A change to these statements or columns needs a migration that
re-creates the triggers (and a frozen copy of this module for the older one, as
:mod:`storage.stats_rollup_0010`).
"""

from __future__ import annotations

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

DIMENSIONS = ("month", "unit_code", "queue_key", "kind", "category")
STATUS_COLUMNS = tuple(f"st_{s}" for s in STATUSES)
OUTCOME_COLUMNS = tuple(f"oc_{o}" for o in OUTCOMES)
CLAIM_COLUMNS = tuple(f"claim_{i}" for i in range(BUCKETS))
ACK_COLUMNS = tuple(f"ack_{i}" for i in range(BUCKETS))
#: Count columns of each table.
MEASURES: dict[str, tuple[str, ...]] = {
    "stats_received": ("reports", *STATUS_COLUMNS, *CLAIM_COLUMNS, *ACK_COLUMNS),
    "stats_resolved": ("reports", "subjects", "assisted", *OUTCOME_COLUMNS),
}
ROLLUP_TABLES = tuple(MEASURES)

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


def month_expr(dialect: str, column: str, whole_year: bool = False) -> str:
    """The local month of ``column`` as ``yyyymm``; with ``whole_year``, its year as ``yyyy00``."""
    if dialect == "postgresql":
        pattern = "YYYY" if whole_year else "YYYYMM"
        value = f"CAST(to_char({column} AT TIME ZONE 'Asia/Ho_Chi_Minh', '{pattern}') AS integer)"
    else:
        pattern = "%Y" if whole_year else "%Y%m"
        value = f"CAST(strftime('{pattern}', {column}, '+7 hours') AS INTEGER)"
    return f"{value} * 100" if whole_year else value


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


def parts(dialect: str, r: str, b: str) -> list[tuple[str, list[str], list[str], str]]:
    """Per table: name, key expressions of row ``r``, measure expressions (in the order of
    :data:`MEASURES`; ``b.cb`` and ``b.ab`` are the claim and acknowledge buckets), where."""
    values = [
        f"coalesce({r}.unit_code, '')",
        f"coalesce({r}.queue_key, '')",
        f"{r}.kind",
        f"coalesce({r}.category, '')",
    ]
    received = [
        "1",
        *(_flag(f"{r}.status = '{s}'") for s in STATUSES),
        *(_flag(f"{b}.cb = {i}") for i in range(BUCKETS)),
        *(_flag(f"{b}.ab = {i}") for i in range(BUCKETS)),
    ]
    resolved = [
        "1",
        f"coalesce({r}.subjects_handled, 0)",
        _flag(f"{r}.citizen_assisted_arrest"),
        *(_flag(f"{r}.outcome = '{o}'") for o in OUTCOMES),
    ]
    return [
        (
            "stats_received",
            [month_expr(dialect, f"{r}.created_at", whole_year), *values],
            received,
            f"{r}.created_at IS NOT NULL",
        )
        for whole_year in (False, True)
    ] + [
        (
            "stats_resolved",
            [month_expr(dialect, f"{r}.resolved_at", whole_year), *values],
            resolved,
            f"{r}.status = 'resolved' AND {r}.resolved_at IS NOT NULL",
        )
        for whole_year in (False, True)
    ]


def buckets_select(dialect: str, r: str) -> str:
    """``cb`` and ``ab`` of row ``r``, computed once per row."""
    return (
        f"{bucket_expr(dialect, r, 'claimed_at', False)} AS cb, "
        f"{bucket_expr(dialect, r, 'acknowledged_at', True)} AS ab"
    )


def upsert(table: str, select: str) -> str:
    measures = MEASURES[table]
    sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in measures)
    return (
        f"INSERT INTO {table} ({', '.join([*DIMENSIONS, *measures])}) {select} "
        f"ON CONFLICT ({', '.join(DIMENSIONS)}) DO UPDATE SET {sets}"
    )


def statements(dialect: str, row: str, sign: str) -> list[str]:
    """Upserts adding ``sign`` times the contribution of ``row`` (``NEW`` or ``OLD``)."""
    out = []
    for table, keys, measures, where in parts(dialect, row, "b"):
        signed = [f"{sign} * {m}" for m in measures]
        source = f"(SELECT {buckets_select(dialect, row)}) AS b"
        select = f"SELECT {', '.join([*keys, *signed])} FROM {source} WHERE {where}"  # noqa: S608
        out.append(upsert(table, select))
    return out


def fill(dialect: str) -> list[str]:
    """The same contributions summed over the reports already stored."""
    out = []
    buckets = buckets_select(dialect, "reports")
    source = f"(SELECT reports.*, {buckets} FROM reports) AS r"  # noqa: S608 (no input)
    for table, keys, measures, where in parts(dialect, "r", "r"):
        aliased = ", ".join(f"{v} AS k{i}" for i, v in enumerate(keys))
        measured = ", ".join(f"{m} AS m{j}" for j, m in enumerate(measures))
        grouped = ", ".join(f"k{i}" for i in range(len(keys)))
        sums = ", ".join(f"sum(m{j})" for j in range(len(measures)))
        select = (
            f"SELECT {grouped}, {sums} FROM (SELECT {aliased}, {measured} "  # noqa: S608 (no input)
            f"FROM {source} WHERE {where}) AS x GROUP BY {grouped}"
        )
        out.append(upsert(table, select))
    return out


def changed(dialect: str) -> str:
    op_ = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{c} {op_} NEW.{c}" for c in COUNTED)


def trigger_statements(dialect: str) -> list[str]:
    """CREATE statements of the triggers (and PostgreSQL's trigger function)."""
    if dialect == "postgresql":
        old = ";\n    ".join(statements(dialect, "OLD", "-1"))
        new = ";\n    ".join(statements(dialect, "NEW", "1"))
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
    body_new = "".join(s + ";\n" for s in statements(dialect, "NEW", "1"))
    body_old = "".join(s + ";\n" for s in statements(dialect, "OLD", "-1"))
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


def rebuild_statements(dialect: str) -> list[str]:
    """Empty the rollups and fill them again from the reports (one transaction, by the caller)."""
    return [f"DELETE FROM {table}" for table in ROLLUP_TABLES] + fill(dialect)  # noqa: S608
