"""``[gateway] event_loop``: the service runs on uvloop by default, on asyncio's loop on request."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway import eventloop
from gateway.config import load_config
from gateway.errors import ConfigError


async def _which() -> str:
    return eventloop.name(asyncio.get_running_loop())


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_run_uses_the_chosen_loop(kind: eventloop.EventLoop) -> None:
    assert eventloop.run(_which(), kind) == kind


def test_without_uvloop_installed_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert eventloop.run(_which(), "uvloop") == "asyncio"


def test_config_default_and_a_wrong_value(tmp_path: Path) -> None:
    cfg = tmp_path / "calgate.toml"
    cfg.write_text('[gateway]\nid = "e"\nsite = "s"\n')
    assert load_config(cfg).gateway.event_loop == "uvloop"
    cfg.write_text('[gateway]\nid = "e"\nsite = "s"\nevent_loop = "trio"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any("gateway.event_loop" in e for e in err.value.errors)
