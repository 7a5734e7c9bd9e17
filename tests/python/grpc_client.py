"""The real gRPC client of tests/grpc.rs (grpcio's asyncio API), against the
service of examples/grpc/echo.proto:

    grpc_client.py ADDRESS STUBS_DIR UNARY_CLIENTS STREAMS

Until its stdin closes (or two minutes pass), UNARY_CLIENTS clients call
`Echo` one call after another and STREAMS clients read `Ticks` streams of 50
ticks 20 ms apart one after another, each client on a channel of its own (its
own HTTP/2 connection), with grpcio's defaults otherwise. Then it lets the
calls in flight finish and exits. What it prints, as it happens:

    stream-began CLIENT PID     a stream's first tick came, from PID

and once it stopped (END is the stream's end on CLOCK_MONOTONIC, in seconds):

    stream PIDS TICKS IN_ORDER END     for every stream (PIDS comma-separated)
    unary PID CALLS                    calls each pid answered
    failed WHAT CODE DETAILS           for every call or stream not OK
    done
"""

import asyncio
import collections
import sys
import threading
import time

import grpc

address, stubs, unary_clients, stream_clients = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, stubs)
import echo_pb2  # noqa: E402 (generated into STUBS_DIR by the test)
import echo_pb2_grpc  # noqa: E402

TICKS, INTERVAL_MS = 50, 20
# Bounds, so that a server that stops answering fails the test instead of hanging it.
CALL_TIMEOUT, STREAM_TIMEOUT, RUN_AT_MOST = 10, 30, 120

answered = collections.Counter()
streams = []
failures = []


def channel():
    # A subchannel pool of its own: one connection per client, not one shared.
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def unary(client, stop):
    async with channel() as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        n = 0
        while not stop.is_set():
            n += 1
            message = f"{client}-{n}"
            try:
                reply = await stub.Echo(echo_pb2.EchoRequest(message=message), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                failures.append(("Echo", e.code().name, e.details()))
                continue
            if reply.message != message:
                failures.append(("Echo", "WRONG_REPLY", f"{reply.message!r} for {message!r}"))
            answered[reply.pid] += 1


async def ticks(client, stop):
    async with channel() as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        while not stop.is_set():
            call = stub.Ticks(echo_pb2.TicksRequest(count=TICKS, interval_ms=INTERVAL_MS), timeout=STREAM_TIMEOUT)
            got = []
            try:
                async for tick in call:
                    if not got:
                        print(f"stream-began {client} {tick.pid}", flush=True)
                    got.append(tick)
            except grpc.aio.AioRpcError as e:
                failures.append(("Ticks", e.code().name, e.details()))
            pids = sorted({t.pid for t in got})
            in_order = [t.n for t in got] == list(range(1, len(got) + 1))
            streams.append((",".join(map(str, pids)) or "-", len(got), in_order, time.monotonic()))


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_stdin_to_close():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    loop.call_later(RUN_AT_MOST, stop.set)
    await asyncio.gather(*[unary(i, stop) for i in range(unary_clients)],
                         *[ticks(i, stop) for i in range(stream_clients)])


asyncio.run(main())
for pids, got, in_order, end in streams:
    print(f"stream {pids} {got} {'yes' if in_order else 'no'} {end:.6f}")
for pid, calls in sorted(answered.items()):
    print(f"unary {pid} {calls}")
for what, code, details in failures:
    print(f"failed {what} {code} {details!r}")
print("done", flush=True)
