"""Statistics: monthly rollups kept by triggers in the same transaction as each report change.

Revision ID: 0010
Revises: 0006

Three small tables hold counts by local calendar month (Vietnam's time, UTC+7):

* ``stats_received``: reports by the month they arrived (``created_at``), unit, queue, kind,
  category and status;
* ``stats_resolved``: resolved reports by the month they were resolved, unit, queue, kind,
  category, outcome and whether citizens took part in an arrest, with the subjects handled;
* ``stats_durations``: times to claim and to acknowledge (emergencies), by arrival month and the
  same dimensions, in fixed buckets of seconds (medians are read from these histograms).

Absent values are stored as ``''`` so that every key is unique. Triggers on ``reports`` add a
row's contribution on INSERT, take it away on DELETE, and move it on an UPDATE of a counted
column, so every writer (the chat, the panel, retention, a hand-written statement) keeps them
right, in its own transaction. The tables are filled from the existing reports on upgrade.

Commendations: ``rewards.commendation`` marks a reward that comes with a letter of commendation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None

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


def _month(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"CAST(to_char({column} AT TIME ZONE 'Asia/Ho_Chi_Minh', 'YYYYMM') AS integer)"
    return f"CAST(strftime('%Y%m', {column}, '+7 hours') AS INTEGER)"


def _seconds(dialect: str, start: str, end: str) -> str:
    if dialect == "postgresql":
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def _bucket(seconds: str) -> str:
    whens = " ".join(f"WHEN {seconds} < {edge} THEN {i}" for i, edge in enumerate(BUCKET_EDGES))
    return f"CASE {whens} ELSE {len(BUCKET_EDGES)} END"


def _parts(dialect: str, r: str) -> list[tuple[str, list[str], list[str], list[str], str]]:
    """Per table: name, key columns, key expressions of row ``r``, measure expressions, where."""
    dims = ["month", "unit_code", "queue_key", "kind", "category"]
    values = [
        f"coalesce({r}.unit_code, '')",
        f"coalesce({r}.queue_key, '')",
        f"{r}.kind",
        f"coalesce({r}.category, '')",
    ]
    month = _month(dialect, f"{r}.created_at")
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
                _month(dialect, f"{r}.resolved_at"),
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
        bucket = _bucket(_seconds(dialect, f"{r}.created_at", f"{r}.{column}"))
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


def _upsert(table: str, keys: list[str], select: str) -> str:
    measures = MEASURES.get(table, ["reports"])
    sets = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in measures)
    return (
        f"INSERT INTO {table} ({', '.join([*keys, *measures])}) {select} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    )


def _statements(dialect: str, row: str, sign: str) -> list[str]:
    """Upserts adding ``sign`` times the contribution of ``row`` (``NEW`` or ``OLD``)."""
    out = []
    for table, keys, values, measures, where in _parts(dialect, row):
        signed = [f"{sign} * {m}" for m in measures]
        out.append(_upsert(table, keys, f"SELECT {', '.join([*values, *signed])} WHERE {where}"))
    return out


def _fill(dialect: str) -> list[str]:
    """The same contributions summed over the reports already stored."""
    out = []
    for table, keys, values, measures, where in _parts(dialect, "r"):
        aliased = [f"{v} AS k{i}" for i, v in enumerate(values)]
        sums = [f"sum({m})" for m in measures]
        grouped = ", ".join(f"k{i}" for i in range(len(values)))
        select = (
            f"SELECT {grouped}, {', '.join(sums)} FROM (SELECT {', '.join(aliased)}, "
            f"{', '.join(f'{m} AS m{j}' for j, m in enumerate(measures))} "
            f"FROM reports AS r WHERE {where}) AS x GROUP BY {grouped}"
        )
        select = select.replace(", ".join(sums), ", ".join(f"sum(m{j})" for j in range(len(measures))))
        out.append(_upsert(table, keys, select))
    return out


def _changed(dialect: str) -> str:
    op_ = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{c} {op_} NEW.{c}" for c in COUNTED)


def _create_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        old = ";\n    ".join(_statements(dialect, "OLD", "-1"))
        new = ";\n    ".join(_statements(dialect, "NEW", "1"))
        op.execute(
            "CREATE FUNCTION stats_rollup() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            f"  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n    {old};\n  END IF;\n"
            f"  IF TG_OP IN ('UPDATE', 'INSERT') THEN\n    {new};\n  END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
        op.execute(
            "CREATE TRIGGER stats_rollup_insert AFTER INSERT OR DELETE ON reports "
            "FOR EACH ROW EXECUTE FUNCTION stats_rollup()"
        )
        op.execute(
            "CREATE TRIGGER stats_rollup_update AFTER UPDATE ON reports FOR EACH ROW "
            f"WHEN ({_changed(dialect)}) EXECUTE FUNCTION stats_rollup()"
        )
        return
    body_new = "".join(s + ";\n" for s in _statements(dialect, "NEW", "1"))
    body_old = "".join(s + ";\n" for s in _statements(dialect, "OLD", "-1"))
    op.execute(f"CREATE TRIGGER stats_rollup_insert AFTER INSERT ON reports BEGIN\n{body_new}END")
    op.execute(f"CREATE TRIGGER stats_rollup_delete AFTER DELETE ON reports BEGIN\n{body_old}END")
    op.execute(
        "CREATE TRIGGER stats_rollup_update AFTER UPDATE ON reports "
        f"WHEN {_changed(dialect)} BEGIN\n{body_old}{body_new}END"
    )


def _dims() -> list[sa.Column]:
    return [
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("unit_code", sa.String(length=16), nullable=False),
        sa.Column("queue_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "stats_received",
        *_dims(),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "status",
            name=op.f("pk_stats_received"),
        ),
    )  # fmt: skip
    op.create_table(
        "stats_resolved",
        *_dims(),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("assisted", sa.Integer(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("subjects", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "outcome", "assisted",
            name=op.f("pk_stats_resolved"),
        ),
    )  # fmt: skip
    op.create_table(
        "stats_durations",
        *_dims(),
        sa.Column("measure", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "unit_code", "queue_key", "kind", "category", "measure", "bucket",
            name=op.f("pk_stats_durations"),
        ),
    )  # fmt: skip
    with op.batch_alter_table("rewards") as batch:
        batch.add_column(
            sa.Column(
                "commendation", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    # Fill from the reports already there, with the same expressions as the triggers.
    for statement in _fill(dialect):
        op.execute(statement)
    _create_triggers(dialect)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in TRIGGERS:
        if dialect == "postgresql" and name == "stats_rollup_delete":
            continue
        op.execute(
            f"DROP TRIGGER IF EXISTS {name} ON reports"
            if dialect == "postgresql"
            else f"DROP TRIGGER IF EXISTS {name}"
        )
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS stats_rollup()")
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("commendation")
    op.drop_table("stats_durations")
    op.drop_table("stats_resolved")
    op.drop_table("stats_received")
