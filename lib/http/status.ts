/**
 * @module status
 * The class of an HTTP status code (`2xx`, `4xx`, ...), one mapping for every counter that groups
 * statuses by class.
 *
 * Pure: no I/O, no string building per call.
 */

/** Status class names, in the order of {@link statusClassIndex}. */
export const STATUS_CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"] as const;

/**
 * The index of a status's class in {@link STATUS_CLASSES}. A code outside 100-599 counts as `5xx`:
 * it can only come from a broken peer.
 */
export function statusClassIndex(status: number): number {
  const i = Math.floor(status / 100) - 1;
  return i >= 0 && i < 5 ? i : 4;
}
