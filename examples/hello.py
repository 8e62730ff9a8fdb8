import asyncio
import contextlib
import logging

from leaderelection import ElectionConfig, LeaderElection

logging.basicConfig(level=logging.INFO)  # show what the election does
election = LeaderElection("redis://localhost:6379/0", ElectionConfig(name="hello"))


@election.while_leader  # started when this instance becomes leader, cancelled when it stops
async def work() -> None:
    while True:
        print("leading with fencing token", election.fencing_token)
        await asyncio.sleep(5)


async def main() -> None:
    async with election:  # campaign until Ctrl+C, then hand leadership over
        await asyncio.Event().wait()


with contextlib.suppress(KeyboardInterrupt):
    asyncio.run(main())
