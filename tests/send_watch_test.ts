/**
 * Unit: the send deadline on response bodies (`lib/server/send_watch.ts`), with in-memory streams. The
 * same behaviour behind a real Deno.serve is in `send_timeout_test.ts`.
 */

import assert from "node:assert/strict";
import { SendTimeoutError, SendWatch } from "../lib/server/send_watch.ts";
import { deadline, delay, waitFor } from "./helpers.ts";

deadline.test("SendWatch cancels the source and errors the body when a chunk stays untaken for the deadline", async () => {
  const watch = new SendWatch(200);
  let cancelled: unknown = undefined;
  let pulls = 0;
  const source = new ReadableStream<Uint8Array>({
    pull(c) {
      c.enqueue(new Uint8Array([pulls++]));
    },
    cancel(reason) {
      cancelled = reason;
    },
  }, { highWaterMark: 0 });
  let stalls = 0;
  const reader = watch.wrap(source, () => stalls++).getReader();
  try {
    assert.deepEqual((await reader.read()).value, new Uint8Array([0]));
    assert.deepEqual((await reader.read()).value, new Uint8Array([1]));
    // The consumer stops reading: the second chunk was handed over, no pull follows.
    await waitFor(() => cancelled !== undefined, 3000, "the source to be cancelled");
    assert.ok(cancelled instanceof SendTimeoutError);
    assert.equal(stalls, 1);
    assert.equal(pulls, 2, "the pass-through read ahead of its consumer");
    await assert.rejects(reader.read(), SendTimeoutError);
    assert.equal(watch.waiting, 0);
  } finally {
    watch.close();
  }
});

deadline.test("SendWatch never fires while the source is silent, and passes chunks, order and end unchanged", async () => {
  const watch = new SendWatch(100);
  const chunks = [new Uint8Array([1, 2]), new Uint8Array([3]), new Uint8Array([4, 5, 6])];
  let i = 0;
  const source = new ReadableStream<Uint8Array>({
    async pull(c) {
      // Silent for several deadlines before each chunk, as A between SSE events.
      await delay(300);
      if (i === chunks.length) c.close();
      else c.enqueue(chunks[i++]!);
    },
    cancel() {
      throw new Error("cancelled while only A was silent");
    },
  }, { highWaterMark: 0 });
  let stalls = 0;
  const reader = watch.wrap(source, () => stalls++).getReader();
  try {
    const got: Uint8Array[] = [];
    while (true) {
      const r = await reader.read();
      if (r.done) break;
      got.push(r.value);
    }
    // The same objects, in order: nothing copied, split or joined.
    assert.equal(got.length, 3);
    for (let k = 0; k < 3; k++) assert.equal(got[k], chunks[k]);
    assert.equal(stalls, 0);
  } finally {
    watch.close();
  }
});

deadline.test("SendWatch passes a consumer's cancel on to the source with its reason", async () => {
  const watch = new SendWatch(1000);
  let cancelled: unknown = undefined;
  const source = new ReadableStream<Uint8Array>({
    pull(c) {
      c.enqueue(new Uint8Array([7]));
    },
    cancel(reason) {
      cancelled = reason;
    },
  }, { highWaterMark: 0 });
  const reader = watch.wrap(source).getReader();
  try {
    await reader.read();
    await reader.cancel("client left");
    assert.equal(cancelled, "client left");
    assert.equal(watch.waiting, 0);
  } finally {
    watch.close();
  }
});
