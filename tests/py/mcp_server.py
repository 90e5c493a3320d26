"""An MCP server over Streamable HTTP (the official `mcp` SDK) for tests/it/mcp.rs: a few tools behind kla's
proxy, serving both protocol eras on one endpoint. Every tool execution is appended to $OUT as one JSON line, so a
test can count what actually ran. Prints `listening <port>` once it accepts connections."""

import json
import os
import socket

import anyio
import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer

OUT = os.environ["OUT"]
# The tool list is the same for everyone here, so the server calls it public; kla's filtered answer is not.
server = MCPServer("kla-test-tools", cache_hints={"tools/list": CacheHint(ttl_ms=60000, scope="public")})


def ran(tool: str, args: dict) -> None:
    with open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "args": args}) + "\n")


@server.tool()
def lookup_policy(policy_id: str) -> str:
    """Looks up an insurance policy."""
    ran("lookup_policy", {"policy_id": policy_id})
    return f"policy {policy_id}: active"


@server.tool()
def export_report(report_id: str) -> str:
    """Exports a report (flagged by policy)."""
    ran("export_report", {"report_id": report_id})
    return f"report {report_id} exported"


@server.tool()
def delete_customer(customer_id: str) -> str:
    """Deletes a customer (always blocked by policy)."""
    ran("delete_customer", {"customer_id": customer_id})
    return f"customer {customer_id} deleted"


@server.tool()
def execute_refund(amount: float) -> str:
    """Refunds an amount (blocked over 1000)."""
    ran("execute_refund", {"amount": amount})
    return f"refunded {amount}"


@server.tool()
def wire_money(amount: int, to: str) -> str:
    """Wires money (needs a person's approval)."""
    ran("wire_money", {"amount": amount, "to": to})
    return f"wired {amount} to {to}"


@server.tool(name="_internal_probe")
def internal_probe() -> str:
    """A tool whose name kla's name grammar refuses."""
    ran("_internal_probe", {})
    return "probed"


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("PORT", "0"))))
    sock.listen(128)
    app = server.streamable_http_app(json_response=os.environ.get("JSON_RESPONSE") == "1")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)

    async def announce() -> None:
        while not srv.started:
            await anyio.sleep(0.02)
        print(f"listening {sock.getsockname()[1]}", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await srv.serve(sockets=[sock])


if __name__ == "__main__":
    anyio.run(main)
