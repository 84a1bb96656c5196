"""The cluster's Lua scripts: read once from ``lua/`` beside this module, registered once per
client.

Every change to shared state is one script, so no crash between two commands can lose or
duplicate work. The helpers in ``lua/_lib.lua`` are prepended to every script (Lua has no
imports inside Redis). redis-py sends a script by its SHA-1 and loads it again by itself when
the server lost it (a restart), so a restarted Redis needs nothing from us.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio

_LIBRARY = "_lib.lua"


@cache
def read_lua_script(name: str) -> str:
    """A script's source, with the shared helpers before it."""
    lua = files(__package__).joinpath("lua")
    return lua.joinpath(_LIBRARY).read_text("utf-8") + "\n" + lua.joinpath(name).read_text("utf-8")


class Scripts:
    """The scripts of one asyncio client, each registered on first use."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._registered: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        script = self._registered.get(name)
        if script is None:
            script = self._registered[name] = self.client.register_script(
                read_lua_script(f"{name}.lua")
            )
        return script
