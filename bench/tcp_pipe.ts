/**
 * Calibration row, not a product: a TCP pipe with no HTTP parsing at all. Each accepted socket gets
 * its own connection to the upstream and bytes are copied both ways until either side ends. No
 * Deno program that speaks HTTP can beat this on the same core, so it is the runtime's limit that
 * the relay is measured against.
 *
 *   UPSTREAM=http://127.0.0.1:9000 PORT=8002 deno run -A bench/tcp_pipe.ts
 */

const upstream = new URL(Deno.env.get("UPSTREAM") ?? "http://127.0.0.1:9000");
const upstreamAddr = { hostname: upstream.hostname, port: Number(upstream.port || "80") };
const port = Number(Deno.env.get("PORT") ?? "8002");
/** Read buffer per direction; `bench/stream_mem.ts` sets 4 KiB to find the runtime's memory floor. */
const bufSize = Number(Deno.env.get("PIPE_BUF") ?? 64 * 1024);

/**
 * Copies until `from` ends, through one reused buffer. A plain read/write loop rather than
 * `pipeTo`, so no stream machinery sits between the sockets and a write is awaited before the
 * next read (back-pressure).
 */
async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(bufSize);
  while (true) {
    const n = await from.read(buf);
    if (n === null) return;
    let off = 0;
    while (off < n) off += await to.write(buf.subarray(off, n));
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

async function serve(client: Deno.TcpConn): Promise<void> {
  let server: Deno.TcpConn;
  try {
    server = await Deno.connect(upstreamAddr);
  } catch {
    closeQuietly(client);
    return;
  }
  // Nagle would hold back small heads and bodies by up to 40 ms on either leg.
  client.setNoDelay(true);
  server.setNoDelay(true);
  // A reset or a close from the other side makes one copy fail; either way both sockets go.
  const up = copy(client, server).catch(() => {});
  const down = copy(server, client).catch(() => {});
  await Promise.race([up, down]);
  closeQuietly(client);
  closeQuietly(server);
}

const listener = Deno.listen({ hostname: "127.0.0.1", port });
for await (const conn of listener) serve(conn);
