/**
 * nginx for the benchmark: the static upstream (a fixed ~1 KB JSON via `return 200`) and the
 * reference reverse proxy configured the way Server A's docs recommend (`proxy_buffering off`,
 * upstream keepalive, one worker). Both run in the foreground (`daemon off`, `master_process off`:
 * one process, so its PID is the worker whose CPU we read) with a generated config in a temp dir.
 */

import { CHAT_JSON, freePort, HOST, type Proc, spawn, waitForPort } from "./common.ts";

const NGINX = "/usr/sbin/nginx";

/** The common head of every generated config, up to inside `http {`. */
export function preamble(dir: string): string {
  return `worker_processes 1;
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log error;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
`;
}

/**
 * Config of the static upstream on `port`. With `readBodyPort`, that port is a second server that
 * reads each request's whole body before it answers, as Server A does (it parses the JSON): the
 * static one answers at once and drops the body unread, so a proxy that streams a large body to it
 * gets its answer early and measures an early answer, not a forwarded body.
 */
export function staticConfig(dir: string, port: number, readBodyPort?: number): string {
  // nginx's proxy reads the whole body first (proxy_request_buffering, on by default), in memory.
  const reader = readBodyPort === undefined ? "" : `  server {
    listen ${HOST}:${readBodyPort} backlog=4096;
    client_max_body_size 0;
    client_body_buffer_size 16m;
    location / {
      proxy_pass http://${HOST}:${port};
    }
  }
`;
  // The JSON has no single quotes, so it can sit in a single-quoted nginx string.
  return `${preamble(dir)}${reader}  server {
    listen ${HOST}:${port} backlog=4096;
    # Request bodies over nginx's default 1 MB would get 413 (\`http_cpu.ts --body-kb\`).
    client_max_body_size 0;
    location / {
      default_type application/json;
      return 200 '${CHAT_JSON}';
    }
  }
}
`;
}

/** One listening port of the reverse proxy and the upstream it forwards to. */
export interface ProxySite {
  listen: number;
  upstreamPort: number;
  /**
   * The upstream is HTTPS: nginx verifies its certificate against `trustedCert` for `name` (a DNS
   * name: nginx checks DNS subject alternative names, not IP ones) and keeps the TLS connections
   * alive as it does plain ones. nginx speaks only HTTP/1.1 to an upstream.
   */
  tls?: { trustedCert: string; name: string };
}

/** Config of the reverse proxy, one `server` per site. */
export function proxyConfig(dir: string, sites: ProxySite[]): string {
  let out = preamble(dir);
  sites.forEach((s, i) => {
    out += `  upstream a${i} {
    server ${HOST}:${s.upstreamPort};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen ${HOST}:${s.listen} backlog=4096;
    underscores_in_headers on;
    client_max_body_size 0;
    location / {
      proxy_pass ${s.tls === undefined ? "http" : "https"}://a${i};${
      s.tls === undefined ? "" : `
      proxy_ssl_trusted_certificate ${s.tls.trustedCert};
      proxy_ssl_verify on;
      proxy_ssl_name ${s.tls.name};
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;`
    }
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_cache off;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }
  }
`;
  });
  return out + "}\n";
}

/** Writes `config` into `dir` and starts nginx on `cpu`; resolves once `port` accepts. */
export async function startNginx(
  name: string,
  dir: string,
  config: string,
  opts: { cpu: string; ports: number[] },
): Promise<Proc> {
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(`${dir}/nginx.conf`, config);
  const proc = spawn(
    name,
    [NGINX, "-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`],
    {
      cpu: opts.cpu,
      logFile: `${dir}/stdout.log`,
    },
  );
  for (const p of opts.ports) await waitForPort(p, 15_000, proc);
  return proc;
}

/**
 * A fake Server A on core 1: nginx answering every request with the benchmark's ~1 KB JSON; with
 * `readBody`, only once it has read the request's whole body ({@link staticConfig}).
 */
export async function startJsonUpstream(
  dir: string,
  readBody = false,
): Promise<{ proc: Proc; url: string }> {
  const port = freePort();
  const front = readBody ? freePort() : undefined;
  const proc = await startNginx(
    "nginx",
    `${dir}/nginx`,
    staticConfig(`${dir}/nginx`, port, front),
    { cpu: "1", ports: front === undefined ? [port] : [port, front] },
  );
  return { proc, url: `http://${HOST}:${front ?? port}` };
}

/** `nginx -v` output, e.g. "nginx/1.22.1". */
export async function nginxVersion(): Promise<string> {
  const out = await new Deno.Command(NGINX, { args: ["-v"], stderr: "piped" }).output();
  return new TextDecoder().decode(out.stderr).trim().replace(/^nginx version: /, "");
}
