"""The impact reader's pages on real influxd: every stored reading of a channel in the
window once, in time order, whatever the page size, also when two series of the channel
(a unit tag that changed) share a timestamp; memory per page bounded by the page size."""

from __future__ import annotations

import pytest
from servers import InfluxV1

from gateway.impact import InfluxReader
from gateway.settings import InfluxSettings
from gateway.sinks.influx import session

T0 = 1_790_000_000_000_000_000


def _rows(influxd: InfluxV1, db: str) -> None:
    lines = []
    for i in range(10):
        t = T0 + i * 1_000_000_000
        for unit, seq in (("mbar", 2 * i), ("kPa", 2 * i + 1)):
            lines.append(
                f"reading,channel=p,equipment=PT,quantity=pressure,site=s,unit={unit} "
                f'raw={i}.5,value={i}.25,U=0.1,quality="good",calibration="valid",'
                f'certificate="C1",conformity="pass",seq={seq}i {t}'
            )
        lines.append(f"reading,channel=q,equipment=PT,site=s,unit=mbar raw=1,seq={100 + i}i {t}")
        lines.append(
            f"reading,channel=p,equipment=PT,site=other,unit=mbar raw=1,seq={200 + i}i {t}"
        )
    status, body = influxd.http(f"/write?db={db}&precision=ns", "\n".join(lines).encode())
    assert status == 204, body


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_pages_give_each_reading_once_in_time_order(
    influxd: InfluxV1, unique_name: str, size: int
) -> None:
    influxd.create_database(unique_name)
    _rows(influxd, unique_name)
    settings = InfluxSettings(api="v1", url=influxd.url, database=unique_name)
    async with session(settings) as http:
        reader = InfluxReader(settings, http)
        pages = [p async for p in reader.pages("s", "PT", "p", T0 + 1, T0 + 9_000_000_001, size)]
    assert all(len(p) <= size for p in pages)
    seqs = [s for p in pages for s in p.seq]
    times = [int(t) for p in pages for t in p.time]
    assert sorted(seqs) == list(range(2, 20))  # seconds 1..9, both series; not 0 s, not 10 s
    assert times == sorted(times)
    assert {u for p in pages for u in p.unit} == {"mbar", "kPa"}
    assert [float(v) for p in pages for v in p.value][:2] == [1.25, 1.25]
