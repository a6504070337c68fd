"""The sales department's CRM database: five `crm_*` tables seeded from a `DemoWorld`.

Works on SQLite (aiosqlite) and PostgreSQL (asyncpg) through SQLAlchemy's async engine.
`crm_customers.updated_at` starts as the record's creation time and is set by every
write to it (the gateway's version of a customer); `crm_followups` starts empty and holds
the follow-up notes written through the gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.ext.asyncio import create_async_engine

from demo.people import DemoWorld

__all__ = [
    "crm_customers",
    "crm_followups",
    "crm_opportunities",
    "crm_orders",
    "crm_reps",
    "metadata",
    "seed_sales_db",
    "sqlite_dsn",
]

metadata = MetaData()

# The gateway's SQL is written against these exact names; SQLite keeps TIMESTAMP as text
# "2024-01-31 08:00:00.000000" and NUMERIC as a number, PostgreSQL as the real types.
crm_customers = Table(
    "crm_customers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("full_name", Text),
    Column("email", Text),
    Column("phone", Text),
    Column("national_id", Text),
    Column("address", Text),
    Column("lifetime_value", Numeric(12, 2)),
    Column("owner_rep", Text),
    Column("created_at", TIMESTAMP),
    Column("updated_at", TIMESTAMP, nullable=False),
)

crm_orders = Table(
    "crm_orders",
    metadata,
    Column("id", Text, primary_key=True),
    Column("customer_id", Integer),
    Column("placed_at", TIMESTAMP),
    Column("total", Numeric(12, 2)),
    Column("status", Text),
    Index("ix_crm_orders_customer_id", "customer_id"),
)

crm_opportunities = Table(
    "crm_opportunities",
    metadata,
    Column("id", Text, primary_key=True),
    Column("customer_id", Integer),
    Column("owner_rep", Text),
    Column("stage", Text),
    Column("amount", Numeric(12, 2)),
    Column("updated_at", TIMESTAMP),
    Index("ix_crm_opportunities_customer_id", "customer_id"),
)

# Notes a sales or service agent leaves on a customer ("call back after the 15th");
# `id` is the database's own (SQLite's rowid, a PostgreSQL serial).
crm_followups = Table(
    "crm_followups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", Integer, nullable=False),
    Column("note", Text, nullable=False),
    Column("due_on", Date, nullable=True),
    Column("created_by", Text, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    Index("ix_crm_followups_customer_id", "customer_id"),
)

crm_reps = Table(
    "crm_reps",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text),
    Column("is_manager", Boolean),
)


def sqlite_dsn(data_dir: Path) -> str:
    """The DSN of the sales database file under `data_dir` (the directory is not created)."""
    return f"sqlite+aiosqlite:///{(Path(data_dir) / 'sales.db').resolve()}"


def _naive_utc(moment: datetime) -> datetime:
    # TIMESTAMP WITHOUT TIME ZONE: the CRM stores UTC wall time, as many old CRMs do.
    return moment.astimezone(UTC).replace(tzinfo=None)


async def seed_sales_db(dsn: str, world: DemoWorld) -> None:
    """Drop and recreate the five `crm_*` tables at `dsn`, then bulk-insert the world's rows
    (no follow-ups: those are written through the gateway)."""
    sales = world.sales
    rows: list[tuple[Table, list[dict[str, Any]]]] = [
        (crm_reps, [{"id": r.id, "name": r.name, "is_manager": r.is_manager} for r in sales.reps]),
        (
            crm_customers,
            [
                {
                    "id": c.id,
                    "full_name": c.full_name,
                    "email": c.email,
                    "phone": c.phone,
                    "national_id": c.national_id,
                    "address": c.address,
                    "lifetime_value": c.lifetime_value,
                    "owner_rep": c.owner_rep,
                    "created_at": _naive_utc(c.created_at),
                    "updated_at": _naive_utc(c.created_at),
                }
                for c in sales.customers
            ],
        ),
        (
            crm_orders,
            [
                {
                    "id": o.id,
                    "customer_id": o.customer_id,
                    "placed_at": _naive_utc(o.placed_at),
                    "total": o.total,
                    "status": o.status,
                }
                for o in sales.orders
            ],
        ),
        (
            crm_opportunities,
            [
                {
                    "id": o.id,
                    "customer_id": o.customer_id,
                    "owner_rep": o.owner_rep,
                    "stage": o.stage,
                    "amount": o.amount,
                    "updated_at": _naive_utc(o.updated_at),
                }
                for o in sales.opportunities
            ],
        ),
    ]
    engine = create_async_engine(dsn)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
            for table, values in rows:
                if values:
                    # A list of parameter sets makes one executemany (or multi-row VALUES) call.
                    await conn.execute(table.insert(), values)
    finally:
        await engine.dispose()
