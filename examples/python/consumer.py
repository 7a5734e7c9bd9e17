#!/usr/bin/env python3
"""A Redis Streams consumer that restarts gracefully on SIGUSR2 through grestart:
a service with no listener, where a restart loses no message and does none twice.

    pip install "./bindings/python[redis]"
    python3 examples/python/consumer.py redis://127.0.0.1:6379
    kill -USR2 <pid>    # restart onto the program on disk; nothing is lost

It reads the stream "jobs" in the consumer group "workers", each generation as
a consumer of its own, so that what one took is its own pending entries. Each
message (fields "id" and, optionally, "ms": how long its work takes) is worked
on, then recorded in the stream "done" (its id, this pid and generation) and
acknowledged in one MULTI/EXEC: a message is done and acknowledged, or neither.
Up to BATCH messages are taken at once and worked on side by side. Once a
successor consumes, this process takes no new message, finishes and
acknowledges those it took, leaves the group, runs its shutdown hooks and exits.
"""

import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import redis

import grestart

VERSION = os.environ.get("APP_VERSION", "1")
STREAM, GROUP, DONE = "jobs", "workers", "done"
BATCH = 50
# How long a read waits for a message on an idle stream: how late a draining
# process may notice the drain. It takes no message after that read.
BLOCK_MS = 100
done = 0


def main() -> int:
    global done
    if len(sys.argv) != 2:
        print("usage: consumer.py REDIS_URL   (e.g. redis://127.0.0.1:6379)", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):  # BUSYGROUP: an earlier generation made it
            raise
    consumer = f"{socket.gethostname()}-{os.getpid()}"

    def work(message: "tuple[str, dict[str, str]]") -> None:
        message_id, fields = message
        time.sleep(int(fields.get("ms", 0)) / 1000)  # the work
        with client.pipeline(transaction=True) as transaction:  # MULTI ... EXEC
            record = {"id": fields["id"], "pid": os.getpid(), "generation": grestart.generation()}
            transaction.xadd(DONE, record)
            transaction.xack(STREAM, GROUP, message_id)
            transaction.execute()

    @grestart.on_shutdown
    def goodbye() -> None:
        print(f"consumer.py: pid {os.getpid()} generation {grestart.generation()} exiting after "
              f"{done} messages", file=sys.stderr)

    grestart.set_drain_deadline(30)
    # `docker stop`, `systemctl stop`, the launcher's SIGTERM: drain, run the hooks, exit 0.
    grestart.set_stop_signal(signal.SIGTERM)
    print(f"consumer.py: pid {os.getpid()} generation {grestart.generation()} version {VERSION} "
          f"consuming {STREAM} as {consumer}", flush=True)
    grestart.ready()  # the previous generation drains now: it takes no new message
    with ThreadPoolExecutor(BATCH) as workers:
        while not grestart.draining():  # a successor consumes: take nothing new
            for _stream, messages in client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=BATCH,
                                                       block=BLOCK_MS):
                list(workers.map(work, messages))  # all done and acknowledged, or raises
                done += len(messages)
    # Leave the group, or it keeps a consumer per generation. Only with nothing
    # pending: deleting a consumer deletes its pending entries, unacknowledged.
    if not client.xpending_range(STREAM, GROUP, "-", "+", 1, consumername=consumer):
        client.xgroup_delconsumer(STREAM, GROUP, consumer)
    grestart.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
