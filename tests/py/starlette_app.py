"""A stock Starlette app for tests/it/proxy_target.rs: the kind of tool API agents call through kla's proxy. Its
handlers read what a typical app reads (path parameters, `request.json()`, form bodies, query parameters); every
handler that runs appends one JSON line to $OUT, so a test can tell which calls reached application code. It
also answers redirects, as Starlette's own `redirect_slashes` does. Prints `listening <port>` once it accepts
connections."""

import json
import os
import socket

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

OUT = os.environ["OUT"]


def ran(handler: str, **fields) -> None:
    with open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps({"handler": handler, **fields}) + "\n")


async def delete_customer(request):
    ran("delete_customer", id=request.path_params["id"])
    return JSONResponse({"deleted": request.path_params["id"]})


async def refund(request):
    # Read the way many apps do: the JSON body if it parses, else the form, with the query beside them.
    amount = request.query_params.get("amount")
    try:
        body = await request.json()
        amount = amount or body.get("amount")
    except Exception:
        form = await request.form()
        amount = amount or form.get("amount")
    ran("refund", amount=amount, query=dict(request.query_params))
    return JSONResponse({"refunded": amount})


async def lookup(request):
    ran("lookup", id=request.path_params["id"])
    return JSONResponse({"id": request.path_params["id"]})


async def moved(request):
    return RedirectResponse(url=str(request.url_for("lookup", id="c-moved")), status_code=307)


app = Starlette(
    routes=[
        Route("/customers/{id}", delete_customer, methods=["DELETE"]),
        Route("/customers/{id}", lookup, methods=["GET"], name="lookup"),
        Route("/refunds", refund, methods=["POST"]),
        Route("/moved", moved, methods=["GET"]),
    ]
)


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def announce() -> None:
        while not srv.started:
            await anyio.sleep(0.02)
        print(f"listening {sock.getsockname()[1]}", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await srv.serve(sockets=[sock])


if __name__ == "__main__":
    anyio.run(main)
