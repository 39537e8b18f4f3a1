"""What the database holds, to prove that a refused request changed nothing."""

import sqlalchemy as sa
from sqlmodel import SQLModel

TABLES = ("jobs", "job_events", "deliveries", "images", "subscriptions", "idempotency_keys")


async def snapshot(db) -> dict[str, list[tuple]]:
    async with db.read() as session:
        state = {}
        for name in TABLES:
            table = SQLModel.metadata.tables[name]
            query = sa.select(table).order_by(*table.primary_key.columns)
            state[name] = [tuple(row) for row in (await session.exec(query)).all()]
        return state
