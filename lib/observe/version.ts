/** The relay's version, kept equal to `deno.json` (a test checks). */
export const VERSION = "0.1.0";
