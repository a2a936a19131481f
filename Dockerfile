# proxy-forwarder (Server B) on the official Deno image.
#   docker compose up -d --build        (see docker-compose.yml and docs/DEPLOY.md)
# No Docker engine runs on the project's CI machines: tests/dockerfile_test.ts checks this file's
# facts (pinned base, non-root user, narrow permissions, health check, port) and runs its commands
# outside Docker.
FROM denoland/deno:debian-2.9.6

WORKDIR /app

# Dependencies first, so a code change does not download them again. deno.json lists npm packages
# that only the tests use (SDKs, a browser driver, test oracles); the relay itself imports none
# today. Keep the ones the relay imports (none), and `deno cache` trims the lockfile to match (the
# integrity hashes of what stays are still checked).
COPY deno.json deno.lock ./
RUN deno eval --no-config 'const keep = []; const c = JSON.parse(Deno.readTextFileSync("deno.json")); c.imports = Object.fromEntries(Object.entries(c.imports).filter(([name]) => keep.includes(name))); Deno.writeTextFileSync("deno.json", JSON.stringify(c, null, 2) + "\n");'

COPY main.ts ./
COPY lib/ ./lib/
COPY scripts/healthcheck.ts scripts/doctor.ts ./scripts/
# Cached as root, then handed to the runtime user (the code itself stays root-owned, read-only).
RUN deno cache main.ts scripts/healthcheck.ts scripts/doctor.ts && chown -R deno:deno /deno-dir

USER deno

# Listen on every interface inside the container; docker-compose.yml decides what is published.
ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000

# GET / on the relay itself (no curl in the image). The certificate check is skipped only for this
# loopback call, so a relay serving HTTPS with a certificate for its public name is still healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["deno", "run", "--allow-net=127.0.0.1", "--allow-env=PORT,TLS_CERT_FILE", "--unsafely-ignore-certificate-errors=127.0.0.1", "scripts/healthcheck.ts"]

# Narrow permissions: network (Server A and the listener), environment (configuration), reading
# files under /app only (ROUTES_FILE, TLS files: mount them there). No write, run, ffi or sys.
# `deno task start` narrows --allow-net further to the configured hosts; in a container the
# network namespace is the boundary. The image's tini passes signals (SIGTERM, SIGHUP) to Deno.
# The V8 flag gives the heap room while many streams open (lib/ops/permissions.ts, RELAY_V8_FLAGS).
# --no-config: the relay reads nothing from deno.json; reading it costs ~1.3 MB of idle RSS.
# --no-code-cache: compiling what runs costs less memory than loading V8's cache of everything
# (lib/ops/permissions.ts, RELAY_NO_CODE_CACHE). --v8-flags: the heap's room while many streams
# open, and the optimising compiler on the main thread (memory after traffic; RELAY_V8_FLAGS).
CMD ["run", "--no-config", "--no-code-cache", "--unstable-no-legacy-abort", "--v8-flags=--initial-old-space-size=64,--no-concurrent-recompilation,--expose-gc", "--allow-net", "--allow-env", "--allow-read=/app", "main.ts"]
