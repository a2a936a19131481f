/**
 * @module slot_set
 * A set of objects for long-lived owners whose members come and go all the time (the watchdogs'
 * items, the server's connections): an array that only grows, each member keeping its index under
 * a key of the set, and a member leaving by the last one taking its place.
 *
 * Why not a `Set`: a `Set` that churns makes a new hash table every so often, and V8 leaves the old
 * table (in the old generation, since the owner lives long) holding the members that were in it.
 * Young-generation GCs treat that garbage as live until the next full GC, so every member it held
 * survives, with all it references: a watched exchange held its whole request. Under load ~15 % of
 * what the relay allocated survived each scavenge (`docs/BENCHMARKS_LOG.md`, seventh round).
 *
 * Must never: keep a reference to an object it no longer holds (its array's unused tail is null).
 */

export class SlotSet<T extends object> {
  /** Members at [0, #size); null beyond. Never shrunk, so it is not reallocated in steady use. */
  readonly #items: Array<T | null> = [];
  #size = 0;
  /** Where a member keeps its index in #items: a key of this set alone. */
  readonly #slot = Symbol("slot");

  /** Number of members. */
  get size(): number {
    return this.#size;
  }

  has(item: T): boolean {
    return this.#indexOf(item) >= 0;
  }

  /** Adds `item`; false if it was a member already. */
  add(item: T): boolean {
    if (this.#indexOf(item) >= 0) return false;
    (item as Record<symbol, number>)[this.#slot] = this.#size;
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
    const last = --this.#size;
    const moved = this.#items[last]!;
    this.#items[last] = null;
    if (i !== last) {
      this.#items[i] = moved;
      (moved as Record<symbol, number>)[this.#slot] = i;
    }
  }

  /** The members now, in an array of their own: for loops whose work adds or removes members. */
  toArray(): T[] {
    return this.#items.slice(0, this.#size) as T[];
  }

  clear(): void {
    this.#items.fill(null, 0, this.#size);
    this.#size = 0;
  }

  /** The member's index, or -1: its slot is only trusted when the array agrees. */
  #indexOf(item: T): number {
    const i = (item as Record<symbol, number | undefined>)[this.#slot];
    return i !== undefined && i < this.#size && this.#items[i] === item ? i : -1;
  }
}
