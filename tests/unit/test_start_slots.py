"""StartSlots: at most N starts at once; a server's first worker goes before the others."""

from __future__ import annotations

import asyncio

from mlfleet.runtime.local import FIRST, MORE, StartSlots


def test_starts_wait_for_a_slot_and_first_workers_go_first() -> None:
    async def scenario() -> list[str]:
        slots = StartSlots(1)
        order: list[str] = []
        release = asyncio.Event()

        async def start(name: str, priority: int, hold: bool = False) -> None:
            async with slots.slot(priority):
                order.append(name)
                if hold:
                    await release.wait()

        holder = asyncio.create_task(start("running", FIRST, hold=True))
        await asyncio.sleep(0)
        waiting = [
            asyncio.create_task(start("extra-a", MORE)),
            asyncio.create_task(start("extra-b", MORE)),
            asyncio.create_task(start("first-of-another-server", FIRST)),
        ]
        await asyncio.sleep(0)
        assert order == ["running"]  # one slot: the others wait
        release.set()
        await asyncio.gather(holder, *waiting)
        return order

    assert asyncio.run(scenario()) == ["running", "first-of-another-server", "extra-a", "extra-b"]


def test_a_cancelled_start_passes_its_slot_on() -> None:
    async def scenario() -> list[str]:
        slots = StartSlots(1)
        order: list[str] = []
        release = asyncio.Event()

        async def start(name: str, hold: bool = False) -> None:
            async with slots.slot(FIRST):
                order.append(name)
                if hold:
                    await release.wait()

        holder = asyncio.create_task(start("running", hold=True))
        await asyncio.sleep(0)
        gone = asyncio.create_task(start("gone"))
        after = asyncio.create_task(start("after"))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(holder, after)
        assert gone.cancelled()
        # The slot is free again once everyone is done.
        await asyncio.wait_for(start("last"), 1)
        return order

    assert asyncio.run(scenario()) == ["running", "after", "last"]
