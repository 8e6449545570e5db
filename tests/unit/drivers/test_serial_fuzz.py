"""Random bytes into every serial-line parser: a value or FrameError/DeviceError, nothing else."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.base import Reading
from drivers.errors import DeviceError, FrameError
from drivers.mt_sics import parse_identity, parse_tare, parse_weight, parse_zero, split_i2
from drivers.sbi import parse_frame
from drivers.scpi import parse_error, parse_idn, parse_in_limits, parse_pressure, parse_unit

PARSERS: dict[str, Callable[[bytes], object]] = {
    "mt_sics.weight": parse_weight,
    "mt_sics.zero": parse_zero,
    "mt_sics.tare": parse_tare,
    "mt_sics.i2": lambda b: split_i2(parse_identity(b, "I2")),
    "mt_sics.i4": lambda b: parse_identity(b, "I4"),
    "sbi.frame": parse_frame,
    "scpi.pressure": lambda b: parse_pressure(b, unit="mbar"),
    "scpi.in_limits": parse_in_limits,
    "scpi.unit": parse_unit,
    "scpi.error": parse_error,
    "scpi.idn": parse_idn,
}

# Prefixes that get random input past the first checks of each parser.
PREFIXES = [
    b"",
    b"S S ",
    b"S D ",
    b"S ",
    b"Z ",
    b"T S ",
    b'I2 A "',
    b'I4 A "',
    b"Stat",
    b"N     +",
    b"+ ",
    b":SENS:PRES ",
    b":SENS:PRES:INL ",
    b":UNIT:PRES ",
    b":SYST:ERR ",
]
TAILS = [b"", b"\r\n", b"\n", b"\r"]

frames = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda p, body, t: p + body + t,
        st.sampled_from(PREFIXES),
        st.binary(max_size=40),
        st.sampled_from(TAILS),
    ),
    st.builds(
        lambda p, body, t: p + body.encode("ascii", "replace") + t,
        st.sampled_from(PREFIXES),
        st.text(alphabet="0123456789+-.eE ,[]\"'gkmHLErr\tnaif", max_size=24),
        st.sampled_from(TAILS),
    ),
    # exactly SBI-sized frames, printable
    st.builds(
        lambda body: body.encode("ascii") + b"\r\n",
        st.text(
            alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=14, max_size=14
        )
        | st.text(
            alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=20, max_size=20
        ),
    ),
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames)
@example(frame=b"S S        nan g\r\n")
@example(frame=b":SENS:PRES 1e999\r\n")
@example(frame=b"S S 1" + b"0" * 400 + b" g\r\n")
@example(frame=b"+   1e5000  g  \r\n")
def test_parsers_only_raise_driver_errors(name: str, frame: bytes) -> None:
    parse = PARSERS[name]
    result: object = None
    try:
        result = parse(frame)
    except (FrameError, DeviceError) as exc:
        message = str(exc)  # a message a person can read
    else:
        message = "ok"
    assert message
    if isinstance(result, Reading):
        assert result.quality in ("good", "uncertain", "bad")
        assert isinstance(result.raw, float)
        if result.quality != "bad":
            assert math.isfinite(result.raw)


# -- the simulators parse commands too: random commands never break them ------------------

commands = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.builds(
        lambda head, arg: head + arg,
        st.sampled_from(
            [
                b"S",
                b"SI",
                b"Z",
                b"T",
                b"I2",
                b"I4",
                b"@",
                b"\x1bP",
                b"\x1bT",
                b"\x1bV",
                b":SOUR:PRES ",
                b":OUTP:STAT ",
                b":UNIT:PRES ",
                b":SENS:PRES?",
                b":sense:pressure:inlimits?",
                b"*IDN?",
                b":SYST:ERR?",
                b"*RST",
                b"*CLS",
            ]
        ),
        st.text(alphabet="0123456789.eE+-naifONOF ?:", max_size=12).map(str.encode),
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(commands, min_size=1, max_size=8))
def test_simulators_answer_any_command_without_failing(batch: list[bytes]) -> None:
    import asyncio

    from simulators.mt_sics import MtSicsSim
    from simulators.pressure_controller import PressureControllerSim
    from simulators.sbi import SbiSim

    async def run() -> None:
        sims = [
            MtSicsSim(tau_s=0.001, stable_timeout_s=0.05, seed=1),
            SbiSim(tau_s=0.001, seed=2),
            PressureControllerSim(seed=3),
        ]
        for command in batch:
            for sim in sims:
                if sim.claims(command):
                    reply = await sim.handle(command)
                    assert reply is None or (isinstance(reply, bytes) and b"\n" not in reply)
        for sim in sims:  # and they still answer a good command
            good = {MtSicsSim: b"SI", SbiSim: b"\x1bP", PressureControllerSim: b":SENS:PRES?"}
            assert await sim.handle(good[type(sim)])

    asyncio.run(run())
