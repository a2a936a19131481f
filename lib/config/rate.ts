/**
 * @module rate
 * The rate form of the rate-limit settings (`RATE_LIMIT=60/minute`): parsed with the rest of the
 * configuration, used by `pipeline/rate_limit.ts`. Pure.
 */

/** A rate: at most `limit` requests per `windowSec` seconds, refilled continuously. */
export interface Rate {
  readonly limit: number;
  readonly windowSec: number;
}

const UNIT_SECONDS: Readonly<Record<string, number>> = {
  second: 1,
  sec: 1,
  s: 1,
  minute: 60,
  min: 60,
  m: 60,
  hour: 3600,
  h: 3600,
  day: 86400,
  d: 86400,
};

// Keeps capacity * window-in-ms (see BucketState) well inside exact integer range for any unit.
const MAX_LIMIT = 1_000_000;
const RATE_FORM = /^([1-9][0-9]{0,6})\/([a-z]+)$/;

/**
 * Parses a rate such as `10/minute`, `5/second`, `1000/hour`, `100/day` or the short units
 * `s`, `sec`, `m`, `min`, `h`, `d`. Surrounding whitespace is ignored; units are case-insensitive.
 *
 * @throws {Error} naming `varName`, the value and the expected form.
 */
export function parseRate(s: string, varName: string): Rate {
  const m = RATE_FORM.exec(s.trim().toLowerCase());
  const limit = m?.[1] === undefined ? NaN : Number(m[1]);
  const windowSec = m?.[2] === undefined ? undefined : UNIT_SECONDS[m[2]];
  if (windowSec === undefined || !(limit >= 1 && limit <= MAX_LIMIT)) {
    throw new Error(
      `${varName}: invalid rate ${JSON.stringify(s)}; expected <count>/<unit> where count is a ` +
        `whole number from 1 to ${MAX_LIMIT} and unit is second (s, sec), minute (m, min), ` +
        `hour (h) or day (d), e.g. "60/minute"`,
    );
  }
  return { limit, windowSec };
}
