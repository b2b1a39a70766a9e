"""The reference server: a minimal aiohttp handler returning a fixed chat-completion JSON body.

Prints ``listening on http://127.0.0.1:PORT/v1`` once it accepts connections; stops on SIGTERM.
"""

import asyncio
import signal

from aiohttp import web

BODY = (
    b'{"id":"chatcmpl-0","object":"chat.completion","created":0,"model":"m","usage":{"prompt_tokens":1,'
    b'"completion_tokens":1,"total_tokens":2},"choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"ok"},"finish_reason":"stop"}]}'
)


async def chat(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the real port of port 0
    print(f"minimal server: listening on http://127.0.0.1:{port}/v1", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
