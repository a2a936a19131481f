/**
 * What `deno task start` runs instead of the relay when `scripts/start_args.ts` refused the
 * configuration (and said why on stderr): the task shell ignores a failed `$(...)`, so the exit
 * status 2 of a configuration error has to come from the command the task runs.
 */
Deno.exit(2);
