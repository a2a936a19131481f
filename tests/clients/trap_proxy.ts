/**
 * An HTTP proxy on 127.0.0.1 that forwards nothing: clients are given it as `HTTPS_PROXY` /
 * `HTTP_PROXY` (with 127.0.0.1 exempt), so any attempt to reach another host (telemetry, update
 * checks, model lists) is recorded and refused at once instead of leaving the machine.
 */

import { writeAll } from "./http_wire.ts";

export interface TrapProxy {
  url: string;
  /** First request line of every attempt, e.g. `CONNECT example.com:443 HTTP/1.1`. */
  attempts: string[];
  close(): void;
}

export function startTrapProxy(): TrapProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const trap: TrapProxy = {
    url: `http://127.0.0.1:${port}`,
    attempts: [],
    close() {
      try {
        listener.close();
      } catch { /* closed */ }
    },
  };
  (async () => {
    try {
      for await (const conn of listener) {
        (async () => {
          const buf = new Uint8Array(8192);
          const n = await conn.read(buf).catch(() => null);
          if (n !== null) {
            const line = new TextDecoder().decode(buf.subarray(0, n)).split("\r\n")[0] ?? "";
            trap.attempts.push(line.slice(0, 200));
          }
          await writeAll(
            conn,
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
          ).catch(() => {});
        })().finally(() => {
          try {
            conn.close();
          } catch { /* closed */ }
        });
      }
    } catch { /* listener closed */ }
  })();
  return trap;
}
