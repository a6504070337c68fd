"""The sales CRM database: exact tables, every row of the world, re-seedable, on both engines."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from demo.people import DemoWorld, generate
from demo.sales_db import seed_sales_db, sqlite_dsn

COLUMNS = {
    "crm_customers": [
        "id",
        "full_name",
        "email",
        "phone",
        "national_id",
        "address",
        "lifetime_value",
        "owner_rep",
        "created_at",
        "updated_at",
    ],
    "crm_followups": ["id", "customer_id", "note", "due_on", "created_by", "created_at"],
    "crm_orders": ["id", "customer_id", "placed_at", "total", "status"],
    "crm_opportunities": ["id", "customer_id", "owner_rep", "stage", "amount", "updated_at"],
    "crm_reps": ["id", "name", "is_manager"],
}


@pytest.fixture(scope="module")
def world() -> DemoWorld:
    return generate(42, customers=1000)


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    return {
        t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one() for t in COLUMNS
    }


def _as_datetime(value: datetime | str) -> datetime:
    # SQLite hands TIMESTAMP back as the text SQLAlchemy stored; PostgreSQL as a datetime.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def _check_database(dsn: str, world: DemoWorld) -> None:
    engine = create_async_engine(dsn)
    try:
        async with engine.connect() as conn:
            assert await _counts(conn) == {
                "crm_customers": len(world.sales.customers),
                "crm_orders": len(world.sales.orders),
                "crm_opportunities": len(world.sales.opportunities),
                "crm_reps": len(world.sales.reps),
                "crm_followups": 0,  # written through the gateway, none seeded
            }

            def describe(sync_conn: object) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
                insp = inspect(sync_conn)
                columns = {t: [c["name"] for c in insp.get_columns(t)] for t in COLUMNS}
                indexed = {
                    t: [c for ix in insp.get_indexes(t) for c in ix["column_names"]]
                    for t in ("crm_orders", "crm_opportunities", "crm_followups")
                }
                return columns, indexed

            columns, indexed = await conn.run_sync(describe)
            assert columns == COLUMNS
            assert indexed == {
                "crm_orders": ["customer_id"],
                "crm_opportunities": ["customer_id"],
                "crm_followups": ["customer_id"],
            }

            customer = world.sales.customers[0]
            row = (
                await conn.execute(
                    text("SELECT * FROM crm_customers WHERE id = :id"), {"id": customer.id}
                )
            ).one()
            assert (row.full_name, row.email, row.phone) == (
                customer.full_name,
                customer.email,  # stray spaces and odd case survive the database
                customer.phone,
            )
            assert Decimal(str(row.lifetime_value)) == customer.lifetime_value
            assert _as_datetime(row.created_at) == customer.created_at.replace(tzinfo=None)
            assert _as_datetime(row.updated_at) == _as_datetime(row.created_at)  # seeded so

            order = world.sales.orders[-1]
            total = (
                await conn.execute(
                    text("SELECT sum(total) FROM crm_orders WHERE customer_id = :id"),
                    {"id": order.customer_id},
                )
            ).scalar_one()
            expected = sum(
                (o.total for o in world.sales.orders if o.customer_id == order.customer_id),
                Decimal(0),
            )
            assert Decimal(str(total)).quantize(Decimal("0.01")) == expected
            managers = (
                await conn.execute(text("SELECT id FROM crm_reps WHERE is_manager ORDER BY id"))
            ).scalars()
            assert list(managers) == [r.id for r in world.sales.reps if r.is_manager]
    finally:
        await engine.dispose()


def test_sqlite_dsn_points_into_the_data_dir(tmp_path: Path) -> None:
    assert sqlite_dsn(tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/sales.db"


async def test_sqlite_seed_has_every_row_and_can_be_repeated(
    tmp_path: Path, world: DemoWorld
) -> None:
    dsn = sqlite_dsn(tmp_path)
    await seed_sales_db(dsn, world)
    await seed_sales_db(dsn, world)  # drops and recreates: no duplicate-key error, same rows
    await _check_database(dsn, world)
    assert 950 <= len(world.sales.customers) <= 1050
    assert 4500 <= len(world.sales.orders) <= 5500


async def test_sqlite_reseed_with_another_world_replaces_the_rows(tmp_path: Path) -> None:
    dsn = sqlite_dsn(tmp_path)
    await seed_sales_db(dsn, generate(1, customers=40))
    small = generate(2, customers=20)
    await seed_sales_db(dsn, small)
    await _check_database(dsn, small)


@pytest.mark.postgres
async def test_postgres_seed_has_every_row(postgres_dsn: str, world: DemoWorld) -> None:
    await seed_sales_db(postgres_dsn, world)
    await seed_sales_db(postgres_dsn, world)
    await _check_database(postgres_dsn, world)
