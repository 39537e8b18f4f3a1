"""UTCDateTime on SQLite: its one-step conversion writes what SQLAlchemy's DATETIME writes."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from service.models import UTCDateTime

ZONES = st.builds(timezone, st.integers(-23 * 60, 23 * 60).map(lambda m: timedelta(minutes=m)))
# Aware instants whose UTC value is a datetime (Python's range, not every zone's edge).
INSTANTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES
)

metadata = sa.MetaData()
stamps = sa.Table(
    "stamps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("aware", UTCDateTime()),  # fluxhook's column type
    sa.Column("plain", sa.DateTime()),  # SQLAlchemy's own, given the same instant in UTC
)


@pytest.fixture(scope="module")
def sqlite():
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@given(instant=INSTANTS)
def test_sqlite_stores_sqlalchemys_text_and_reads_the_same_instant(sqlite, instant):
    in_utc = instant.astimezone(UTC).replace(tzinfo=None)
    with sqlite.begin() as transaction:
        sqlite.execute(stamps.insert().values(id=1, aware=instant, plain=in_utc))
        stored = sqlite.exec_driver_sql("SELECT aware, plain FROM stamps").one()
        read = sqlite.execute(sa.select(stamps.c.aware)).scalar_one()
        transaction.rollback()
    assert stored[0] == stored[1]
    assert read == instant and read.tzinfo is UTC


def test_sqlite_keeps_none_and_refuses_a_naive_datetime(sqlite):
    with sqlite.begin() as transaction:
        sqlite.execute(stamps.insert().values(id=1, aware=None))
        assert sqlite.execute(sa.select(stamps.c.aware)).scalar_one() is None
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            sqlite.execute(stamps.insert().values(id=2, aware=datetime(2026, 12, 7)))
        transaction.rollback()
