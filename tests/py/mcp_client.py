"""An MCP client (the official `mcp` SDK's `Client`) for tests/it/mcp.rs. Usage:

    mcp_client.py URL MODE STEPS_JSON

MODE is `legacy` (the initialize handshake) or a stateless revision such as `2026-07-28`. STEPS_JSON is a list of
steps, each `{"op": "list"}`, `{"op": "caps"}` or `{"op": "call", "name": ..., "args": {...}, "timeout": seconds?,
"progress": bool?}`. MODE may also be `auto` (the SDK probes `server/discover`). Prints one JSON line per step: for
`list` the tool names and the answer's cacheScope, for `caps` the protocol version and the server's capabilities as
the client understood them, for `call` the result's isError and texts (and progress notifications seen), or
`{"error": ...}` when the step raised or timed out."""

import json
import sys

import anyio
from mcp import Client


def texts(result) -> list[str]:
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def main() -> None:
    url, mode, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    async with Client(url, mode=mode, cache=None) as client:
        for step in steps:
            try:
                if step["op"] == "caps":
                    out = {
                        "protocolVersion": client.protocol_version,
                        "capabilities": client.server_capabilities.model_dump(
                            mode="json", by_alias=True, exclude_none=True
                        ),
                    }
                elif step["op"] == "list":
                    r = await client.list_tools()
                    out = {
                        "tools": sorted(t.name for t in r.tools),
                        "cacheScope": getattr(r, "cache_scope", None),
                    }
                else:
                    seen: list[dict] = []

                    async def progress(p: float, total: float | None, message: str | None) -> None:
                        seen.append({"progress": p, "message": message})

                    with anyio.fail_after(step.get("timeout", 60)):
                        r = await client.call_tool(
                            step["name"],
                            step.get("args", {}),
                            progress_callback=progress if step.get("progress") else None,
                        )
                    out = {"isError": bool(r.is_error), "texts": texts(r), "progress": seen}
            except TimeoutError:
                out = {"error": "timeout"}
            except Exception as e:  # the test reads what failed
                out = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    anyio.run(main)
