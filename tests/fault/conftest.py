"""The ``fstack`` fixture: see :mod:`tests.fault.harness`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plugin import shops
from tests.fault.harness import API_KEY, API_SECRET, SHOP, START, TZ, FaultStack
from tests.fixtures.stack import AppKeys, Installed, Stacks


@pytest.fixture()
def fstack(stacks: Stacks) -> Iterator[FaultStack]:
    """The app (HTTP, ephemeral port) + the devstore + one Redis + the dev clock at START, the
    shop installed (offline token stored encrypted) with its facts. The processes the test
    started are killed before the app stops."""
    installed = Installed(SHOP, shops.ShopFacts("Fault", TZ, "JPY", "Basic"), START)
    stack = stacks.shop(FaultStack, AppKeys(API_KEY, API_SECRET), installed)
    try:
        yield stack
    finally:
        stack.stop_procs()
