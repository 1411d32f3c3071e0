"""Frozen: the SQL of migration 0010's first rollups (three tables, rows per status, outcome and
duration bucket). Migration 0011 replaced them with :mod:`storage.stats_rollup`; this copy stays
so that 0010 (and 0011's downgrade) keep building the schema they built.

The SQL that kept the statistics rollups (migration 0010): triggers, fill and rebuild.

The same expressions serve the triggers on ``reports`` (one row's contribution, added or taken
away) and the fill from the stored reports (summed), so a rebuild and the triggers agree by
construction; ``tests/test_stats_rollup.py`` checks both against a recount in Python. A change to
these statements needs a migration that re-creates the triggers.
"""

from __future__ import annotations

#: Upper edges (seconds) of the duration buckets; the last bucket is open. Same as
#: ``admin.stats.rollup.BUCKET_EDGES``.
BUCKET_EDGES = (
    30, 60, 120, 180, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, 10800,
    14400, 21600, 28800, 43200, 64800, 86400, 129600, 172800, 259200, 432000, 604800,
    1209600, 2592000,
)  # fmt: skip

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


def month_expr(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"CAST(to_char({column} AT TIME ZONE 'Asia/Ho_Chi_Minh', 'YYYYMM') AS integer)"
    return f"CAST(strftime('%Y%m', {column}, '+7 hours') AS INTEGER)"


def seconds_expr(dialect: str, start: str, end: str) -> str:
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def bucket_expr(seconds: str) -> str:
    whens = " ".join(f"WHEN {seconds} < {edge} THEN {i}" for i, edge in enumerate(BUCKET_EDGES))
    return f"CASE {whens} ELSE {len(BUCKET_EDGES)} END"


def parts(dialect: str, r: str) -> list[tuple[str, list[str], list[str], list[str], str]]:
    """Per table: name, key columns, key expressions of row ``r``, measure expressions, where."""
    dims = ["month", "unit_code", "queue_key", "kind", "category"]
    values = [
        f"coalesce({r}.unit_code, '')",
        f"coalesce({r}.queue_key, '')",
        f"{r}.kind",
        f"coalesce({r}.category, '')",
    ]
    month = month_expr(dialect, f"{r}.created_at")
    out = [
        (
            "stats_received",
            [*dims, "status"],
            [month, *values, f"{r}.status"],
            ["1"],
            f"{r}.created_at IS NOT NULL",
        ),
        (
            "stats_resolved",
            [*dims, "outcome", "assisted"],
            [
                month_expr(dialect, f"{r}.resolved_at"),
                *values,
                f"coalesce({r}.outcome, '')",
                f"CASE WHEN {r}.citizen_assisted_arrest THEN 1 ELSE 0 END",
            ],
            ["1", f"coalesce({r}.subjects_handled, 0)"],
            f"{r}.status = 'resolved' AND {r}.resolved_at IS NOT NULL",
        ),
    ]
    for measure, column, extra in (
        ("claim", "claimed_at", ""),
        ("ack", "acknowledged_at", f" AND {r}.kind = 'emergency'"),
    ):
        bucket = bucket_expr(seconds_expr(dialect, f"{r}.created_at", f"{r}.{column}"))
        out.append(
            (
                "stats_durations",
                [*dims, "measure", "bucket"],
                [month, *values, f"'{measure}'", bucket],
                ["1"],
                f"{r}.{column} IS NOT NULL AND {r}.created_at IS NOT NULL{extra}",
            )
        )
    return out


MEASURES = {"stats_received": ["reports"], "stats_resolved": ["reports", "subjects"]}


def upsert(table: str, keys: list[str], select: str) -> str:
    measures = MEASURES.get(table, ["reports"])
    sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in measures)
    return (
        f"INSERT INTO {table} ({', '.join([*keys, *measures])}) {select} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    )


def statements(dialect: str, row: str, sign: str) -> list[str]:
    """Upserts adding ``sign`` times the contribution of ``row`` (``NEW`` or ``OLD``)."""
    out = []
    for table, keys, values, measures, where in parts(dialect, row):
        signed = [f"{sign} * {m}" for m in measures]
        out.append(upsert(table, keys, f"SELECT {', '.join([*values, *signed])} WHERE {where}"))
    return out


def fill(dialect: str) -> list[str]:
    """The same contributions summed over the reports already stored."""
    out = []
    for table, keys, values, measures, where in parts(dialect, "r"):
        aliased = ", ".join(f"{v} AS k{i}" for i, v in enumerate(values))
        measured = ", ".join(f"{m} AS m{j}" for j, m in enumerate(measures))
        grouped = ", ".join(f"k{i}" for i in range(len(values)))
        sums = ", ".join(f"sum(m{j})" for j in range(len(measures)))
        select = (
            f"SELECT {grouped}, {sums} FROM (SELECT {aliased}, {measured} "  # noqa: S608 (no input)
            f"FROM reports AS r WHERE {where}) AS x GROUP BY {grouped}"
        )
        out.append(upsert(table, keys, select))
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


ROLLUP_TABLES = ("stats_received", "stats_resolved", "stats_durations")


def rebuild_statements(dialect: str) -> list[str]:
    """Empty the rollups and fill them again from the reports (one transaction, by the caller)."""
    return [f"DELETE FROM {table}" for table in ROLLUP_TABLES] + fill(dialect)  # noqa: S608
