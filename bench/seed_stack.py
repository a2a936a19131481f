"""Reference row, not a product: the stack of the project's original deployment guide.

An async FastAPI app with one catch-all route that forwards /v1/... to UPSTREAM through one shared
httpx.AsyncClient and streams the answer back. It shows what the relay replaced, measured on the
same core and load as the other rows. Debian's python3-fastapi, python3-uvicorn, python3-httpx:

    UPSTREAM=http://127.0.0.1:9000 /usr/bin/python3 -m uvicorn seed_stack:app \
        --app-dir bench --host 127.0.0.1 --port 8003 --no-access-log
"""

import os

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9000").rstrip("/")

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}

# No read timeout, since a stream may stay quiet for long. The keep-alive pool is raised from
# httpx's default of 20 so that 50 client connections do not each reconnect to the upstream.
client = httpx.AsyncClient(
    timeout=httpx.Timeout(None, connect=10.0),
    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
)

app = FastAPI()


def dropped(headers) -> set:
    """The hop-by-hop names plus any the Connection header lists."""
    named = {n.strip().lower() for n in headers.get("connection", "").split(",") if n.strip()}
    return HOP_BY_HOP | named


@app.api_route(
    "/v1/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
)
async def forward(path: str, request: Request) -> StreamingResponse:
    drop = dropped(request.headers) | {"host"}
    query = request.url.query
    upstream_request = client.build_request(
        request.method,
        f"{UPSTREAM}/v1/{path}" + (f"?{query}" if query else ""),
        headers=[(k, v) for k, v in request.headers.raw if k.decode("latin-1") not in drop],
        content=request.stream(),
    )
    upstream = await client.send(upstream_request, stream=True)
    drop = dropped(upstream.headers) | {"content-length"}
    return StreamingResponse(
        # Raw bytes: a compressed body passes through as it came.
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop},
        background=BackgroundTask(upstream.aclose),
    )


@app.on_event("shutdown")
async def close_client() -> None:
    await client.aclose()
