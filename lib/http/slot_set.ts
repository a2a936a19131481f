/**
 * @module slot_set
 * A set of objects for long-lived owners whose members come and go all the time (the watchdogs'
 * items, the server's connections): an array that only grows, each member keeping its index under
 * a key its class declares, and a member leaving by the last one taking its place.
 *
 * Why not a `Set`: a `Set` that churns makes a new hash table every so often, and V8 leaves the old
 * table (in the old generation, since the owner lives long) holding the members that were in it.
 * Young-generation GCs treat that garbage as live until the next full GC, so every member it held
 * survives, with all it references: a watched exchange held its whole request. Under load ~15 % of
 * what the relay allocated survived each scavenge (`docs/BENCHMARKS_LOG.md`, seventh round).
 *
 * Why the keys are declared by the members' classes: V8 gives each object a hidden class (map)
 * from the properties it has and the order they came in. A key the set added on first use would
 * give a member a new map for each set it joined and each order it joined them in; code optimised
 * for one map is thrown away (deoptimised) when another arrives. With a key per set (the design
 * until the nineteenth sitting), an exchange watched by the keep-warm probe's watchdog instead of
 * the relay's deoptimised a dozen functions of the request path after every idle spell, and the
 * next client requests paid for their recompilation on the main thread (issue #14).
 *
 * Must never: keep a reference to an object it no longer holds (its array's unused tail is null);
 * hold a member under a key that another set holding it uses (one key per role, below).
 */

/** The key of the watchdogs' sets (`watchdog.ts`): every watched object declares it. */
export const WATCH_SLOT: unique symbol = Symbol("watch slot");
/**
 * The server's idle watchdog. A connection goes between it and the header and body watchdogs (all
 * under {@link WATCH_SLOT}); a key of its own keeps an idle watch that outlives a state change from
 * making the next watchdog throw.
 */
export const IDLE_SLOT: unique symbol = Symbol("idle slot");
/** The server's set of open connections. */
export const CONN_SLOT: unique symbol = Symbol("conn slot");
/** The server's sockets closing after their last response (lingering closes). */
export const LINGER_SLOT: unique symbol = Symbol("linger slot");
/** An HTTP/2 session's streams held back by flow control. */
export const BLOCKED_SLOT: unique symbol = Symbol("blocked slot");

/**
 * An object that can be a member of sets with key `K`: its class declares `[K] = -1`, so that
 * joining a set changes no hidden class.
 */
export type Slotted<K extends symbol> = { [P in K]: number };

export class SlotSet<K extends symbol, T extends Slotted<K>> {
  /** Members at [0, #size); null beyond. Never shrunk, so it is not reallocated in steady use. */
  readonly #items: Array<T | null> = [];
  #size = 0;
  /** Where a member keeps its index in #items. */
  readonly #slot: K;

  constructor(key: K) {
    this.#slot = key;
  }

  /** Number of members. */
  get size(): number {
    return this.#size;
  }

  has(item: T): boolean {
    return this.#indexOf(item) >= 0;
  }

  /**
   * Adds `item`; false if it was a member already. Throws if another set holds it under the same
   * key: that set could no longer find it (a watchdog would expire it after it was unwatched).
   */
  add(item: T): boolean {
    if (this.#indexOf(item) >= 0) return false;
    if (item[this.#slot] >= 0) {
      throw new Error("SlotSet: the member is in another set with this key");
    }
    item[this.#slot] = this.#size as T[K];
    this.#items[this.#size++] = item;
    return true;
  }

  /** Removes `item`; false if it was not a member. */
  delete(item: T): boolean {
    const i = this.#indexOf(item);
    if (i < 0) return false;
    this.deleteAt(i);
    return true;
  }

  /** The member at `i`, for 0 <= i < {@link size}. The order changes as members leave. */
  at(i: number): T {
    return this.#items[i]!;
  }

  /** Removes the member at `i`; the last member moves to `i`. */
  deleteAt(i: number): void {
    this.#items[i]![this.#slot] = -1 as T[K];
    const last = --this.#size;
    const moved = this.#items[last]!;
    this.#items[last] = null;
    if (i !== last) {
      this.#items[i] = moved;
      moved[this.#slot] = i as T[K];
    }
  }

  /** The members now, in an array of their own: for loops whose work adds or removes members. */
  toArray(): T[] {
    return this.#items.slice(0, this.#size) as T[];
  }

  clear(): void {
    for (let i = 0; i < this.#size; i++) this.#items[i]![this.#slot] = -1 as T[K];
    this.#items.fill(null, 0, this.#size);
    this.#size = 0;
  }

  /** The member's index, or -1 (its slot is -1 when it is in no set with this key). */
  #indexOf(item: T): number {
    const i: number = item[this.#slot];
    return i >= 0 && i < this.#size && this.#items[i] === item ? i : -1;
  }
}
