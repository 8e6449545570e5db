"""A simulated Sartorius balance in SBI mode: ``ESC P`` prints a frame, ``ESC T`` tares,
``ESC V`` zeroes (no replies to those two).

Frames are 16 characters (sign, space, value right-aligned in 8 with its decimal point,
space, unit in 3 — blank while unstable — CR LF) or 22 with a 6-character ``id_code``
in front. Over- and underload print status frames (``Stat`` … ``H`` / ``L``); a
DEVICE_ERROR fault prints ``Stat`` … ``Err 101``. The weighing cell is the MT-SICS
simulator's :class:`~simulators.mt_sics.Balance`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from simulators.faults import Faults
from simulators.mt_sics import BalanceSimulator

__all__ = ["SbiSim"]

ESC = b"\x1b"


class SbiSim(BalanceSimulator):
    """A Sartorius SBI balance on a pty and/or TCP."""

    reply_terminator = b"\r\n"

    def __init__(
        self,
        *,
        capacity: float = 220.0,
        resolution: float = 0.01,
        unit: str = "g",
        id_code: str | None = None,
        tau_s: float = 0.3,
        noise: float | None = None,
        drift_per_s: float = 0.0,
        error_code: int = 101,
        host: str = "127.0.0.1",
        port: int = 0,
        tcp: bool = True,
        pty: bool = True,
        faults: Faults | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(unit) > 3 or (id_code is not None and len(id_code) > 6):
            raise ValueError("SBI units have at most 3 characters, id codes at most 6")
        super().__init__(
            capacity=capacity, resolution=resolution, unit=unit, tau_s=tau_s, noise=noise,
            drift_per_s=drift_per_s, host=host, port=port, tcp=tcp, pty=pty, faults=faults,
            seed=seed, clock=clock,
        )  # fmt: skip
        self.id_code = id_code
        self.error_code = error_code

    # -- frames -----------------------------------------------------------------------

    def _status(self, code: str) -> bytes:
        if self.id_code is None:
            return f"Stat{code:^10}".encode()  # 14 characters
        return f"Stat{'':8}{code:<8}".encode()  # 20 characters, the code at position 13

    def frame(self) -> bytes:
        """The frame ``ESC P`` prints now (without CR LF)."""
        b = self.balance
        if b.overload():
            return self._status("H")
        if b.underload():
            return self._status("L")
        value = b.net()
        digits = b.fmt(abs(value))
        if len(digits) > 8:
            return self._status("H")
        unit = b.unit if b.stable() else ""
        body = f"{'-' if value < 0 else '+'} {digits:>8} {unit:<3}"
        if self.id_code is not None:
            body = f"{self.id_code:<6}{body}"
        return body.encode()

    # -- LineDevice -------------------------------------------------------------------

    def claims(self, command: bytes) -> bool:
        return command.startswith(ESC)

    def device_error(self, command: bytes) -> bytes | None:
        if command == ESC + b"P":
            return self._status(f"Err {self.error_code:03d}")
        return None

    async def handle(self, command: bytes) -> bytes | None:
        b = self.balance
        if command == ESC + b"P":
            return self.frame()
        if command == ESC + b"T":
            if not b.overload() and b.gross_true() >= 0:
                b.tare_value = b.round(b.gross_true())
            return None
        if command == ESC + b"V":
            b.do_zero()
            return None
        return None
