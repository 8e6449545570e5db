"""The wire contracts (ARCHITECTURE.md 4.3, 4.4): payloads, lines, and the fast encoder
pinned to the plain one for any Measurement."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from records import T0, event, meas

from drivers.base import Reading
from gateway.model import Measurement
from gateway.wire import (
    _NUMS_CACHED,
    Encoder,
    dumps,
    event_line,
    finite,
    json_safe,
    measurement_line,
    rfc3339,
)


def test_payload_of_a_measurement_is_the_contract() -> None:
    m = replace(meas(0), flags=frozenset({"stable", "dynamic"}))
    assert m.payload(7) == {
        "ts": "2026-11-27T18:38:08.123456Z",
        "seq": 7,
        "equipment": "PT-101",
        "channel": "pressure",
        "raw": 100.0,
        "value": 100.5,
        "unit": "kPa",
        "u": 0.012,
        "U": 0.024,
        "k": 2.0,
        "quality": "good",
        "flags": ["dynamic", "stable"],
        "calibration": "valid",
        "certificate": "DKD-K-1/2026",
        "conformity": "pass",
    }


def test_non_finite_numbers_travel_as_null_everywhere() -> None:
    m = meas(0, raw=math.nan, value=math.inf, u=-math.inf, U=None, k=math.nan)
    p = m.payload(1)
    assert [p[f] for f in ("raw", "value", "u", "U", "k")] == [None] * 5
    assert finite(1.5) == 1.5
    assert finite(2) == 2
    assert finite(math.nan) is None
    assert json_safe({1: (math.inf, [math.nan, 0.5]), "a": {"b": -math.inf}}) == {
        "1": [None, [None, 0.5]],
        "a": {"b": None},
    }
    assert "NaN" not in json.dumps(p)


def test_event_payload_keeps_its_fields_before_the_detail() -> None:
    e = event(3, detail={"limit": 200.0, "seq": 99, "type": "other"})
    p = e.payload(5)
    assert list(p)[:7] == ["ts", "seq", "type", "severity", "equipment", "channel", "message"]
    assert p["seq"] == 5  # a detail never overrides a common field
    assert p["type"] == "out_of_tolerance"
    assert p["limit"] == 200.0
    assert p["ts"] == "2026-11-27T18:38:11.123456Z"


def test_rfc3339_is_utc_with_microseconds() -> None:
    from datetime import timezone

    cet = timezone(timedelta(hours=1))
    assert (
        rfc3339(datetime(2026, 11, 27, 19, 38, 8, 5, tzinfo=cet)) == "2026-11-27T18:38:08.000005Z"
    )


def test_line_protocol_of_an_event() -> None:
    e = event(0, detail={"x": math.nan}, channel=None, equipment="WS 1")
    assert event_line(e, 4, "lab-a") == (
        "event,equipment=WS\\ 1,severity=warning,site=lab-a,type=out_of_tolerance "
        'message="reading 0 above limit",seq=4i,detail="{\\"x\\":null}" 1795804688123456000'
    )


def test_line_protocol_of_a_measurement() -> None:
    line = measurement_line(meas(0), 7, "lab-a")
    assert line == (
        "reading,channel=pressure,equipment=PT-101,quantity=pressure,site=lab-a,unit=kPa "
        'raw=100.0,value=100.5,u=0.012,U=0.024,k=2.0,quality="good",flags="",'
        'calibration="valid",certificate="DKD-K-1/2026",conformity="pass",seq=7i '
        "1795804688123456000"
    )
    nan = replace(
        meas(0, raw=math.nan, value=math.nan, u=None, U=None, k=None, certificate=None,
             conformity=None),
        flags=frozenset({"stable", "out_of_range"}),
    )  # fmt: skip
    # the flags travel in the line too (the payload's list, sorted, comma-separated)
    assert (
        measurement_line(nan, 8, "lab-a").split(" ")[1]
        == 'quality="good",flags="out_of_range,stable",calibration="valid",seq=8i'
    )
    odd = meas(0, equipment="WS 1,a=b", channel="x", certificate='say "hi" \\ bye')
    line = measurement_line(odd, 9, "lab a")
    assert line.startswith(
        "reading,channel=x,equipment=WS\\ 1\\,a\\=b,quantity=pressure,site=lab\\ a,"
    )
    assert 'certificate="say \\"hi\\" \\\\ bye"' in line


def test_dumps_never_writes_nan() -> None:
    assert dumps({"a": math.nan, "b": [math.inf, 1.0]}) == '{"a":null,"b":[null,1.0]}'


def test_cached_parts_never_mix_values_that_compare_equal() -> None:
    # k = 0.0 and -0.0 (or 2 and 2.0) are one dict key; the readings of one poll share
    # their time object, the next poll has another
    enc = Encoder("lab", "calgate")
    t1 = T0 + timedelta(microseconds=1)
    ms = [
        meas(0, k=0.0), meas(0, k=-0.0), meas(1, k=0.0), meas(2, k=2), meas(3, k=2.0),
        meas(4, k=None, u=None), meas(5, k=math.nan, raw=-0.0, value=0.0),
        meas(6, t_wall=t1), meas(7, t_wall=t1, conformity=None), meas(8, flags=frozenset("ab")),
        meas(9, flags=frozenset("ba"), certificate=None), meas(10, t_wall=T0),
    ]  # fmt: skip
    for seq, m in enumerate(ms * 2, 1):
        _, payload, line = enc.measurement(m, seq)
        assert line.decode() == measurement_line(m, seq, "lab")
        assert json.loads(payload) == json.loads(dumps(m.payload(seq)))
        if not isinstance(m.k, int):  # an int k is written as a float (2.0) by design
            assert payload.decode() == dumps(m.payload(seq))  # -0.0 stays -0.0


def test_numbers_cache_turns_itself_off_when_values_never_repeat() -> None:
    enc = Encoder("lab", "calgate")
    n = 2 * _NUMS_CACHED + 10
    for seq in range(1, n + 1):
        m = meas(0, raw=1.0 + seq * 1e-9, value=2.0 + seq * 1e-9)
        _, payload, line = enc.measurement(m, seq)
        if seq % 997 == 0:
            assert payload.decode() == dumps(m.payload(seq))
            assert line.decode() == measurement_line(m, seq, "lab")
    assert enc._nums_off_until > n  # off for a while: every value was new
    m = meas(0, raw=3.0, value=4.0)
    assert enc.measurement(m, n + 1)[1].decode() == dumps(m.payload(n + 1))


# --------------------------------------------------------------------------- properties

_text = st.text(min_size=1, max_size=12)
_SHARED = Encoder("lab", "calgate")
_num = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    equipment=_text,
    channel=_text,
    unit=st.text(max_size=6),
    raw=st.floats(allow_nan=True, allow_infinity=True),
    value=st.floats(allow_nan=True, allow_infinity=True),
    u=_num,
    big_u=_num,
    k=_num,
    flags=st.frozensets(_text, max_size=3),
    certificate=st.one_of(st.none(), _text),
    conformity=st.one_of(st.none(), st.sampled_from(["pass", "fail", "conditional_pass"])),
    quantity=st.one_of(st.none(), _text),
    t_wall=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    seq=st.integers(min_value=1, max_value=2**53),
)
def test_fast_encoder_matches_the_model_for_any_measurement(
    equipment: str,
    channel: str,
    unit: str,
    raw: float,
    value: float,
    u: float | None,
    big_u: float | None,
    k: float | None,
    flags: frozenset[str],
    certificate: str | None,
    conformity: str | None,
    quantity: str | None,
    t_wall: datetime,
    seq: int,
) -> None:
    m = Measurement(
        reading=Reading(
            equipment=equipment, channel=channel, raw=raw, unit=unit, t_wall=t_wall, t_mono=0.0
        ),
        value=value,
        unit=unit,
        u=u,
        U=big_u,
        k=k,
        flags=flags,
        certificate=certificate,
        conformity=conformity,
        quantity=quantity,
    )
    topic, payload, line = Encoder("lab", "calgate").measurement(m, seq)
    assert topic == f"calgate/lab/{equipment}/{channel}/reading"
    assert json.loads(payload) == json.loads(dumps(m.payload(seq)))
    assert line.decode() == measurement_line(m, seq, "lab")
    # the same through an encoder whose caches saw every earlier example
    assert _SHARED.measurement(m, seq) == (topic, payload, line)
    fields = line.decode().rsplit(" ", 2)
    assert fields[2] == str(
        (t_wall - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    )


def test_recorrected_line_keeps_the_reading_tags_and_adds_the_certificate() -> None:
    from gateway.wire import recorrected_line

    line = recorrected_line(
        site="lab a", equipment="PT-101", channel="pressure", quantity="absolute pressure",
        unit="mbar", certificate="PCL 2026,0906", raw=951.0, value=949.5, u=0.04, U=0.08,
        k=2.0, quality="uncertain", flags="", calibration="suspect", conformity="fail", seq=7,
        stored_value=951.0, stored_U=0.08, stored_conformity="pass",
        stored_certificate="PCL 2026,0906", basis='WS-P1 "as found"', registry="ab12",
        time_ns=1_796_000_000_123_456_789,
    )  # fmt: skip
    assert line.startswith(
        r"reading_recorrected,certificate=PCL\ 2026\,0906,channel=pressure,equipment=PT-101,"
        r"quantity=absolute\ pressure,site=lab\ a,unit=mbar "
    )
    head, ts = line.rsplit(" ", 1)
    assert ts == "1796000000123456789"
    fields = head.split("unit=mbar ", 1)[1]
    for part in (
        "raw=951.0", "value=949.5", "u=0.04", "U=0.08", "k=2.0", "stored_value=951.0",
        "stored_U=0.08", 'quality="uncertain"', 'flags=""', 'calibration="suspect"',
        'conformity="fail"', 'stored_conformity="pass"', 'stored_certificate="PCL 2026,0906"',
        r'basis="WS-P1 \"as found\""', 'registry="ab12"', "seq=7i",
    ):  # fmt: skip
        assert part in fields, part
