/**
 * @module id_table
 * A map from integer ids to objects for long-lived owners whose entries come and go all the time
 * (an HTTP/2 session's open streams): open addressing in two arrays that grow and never shrink, an
 * entry leaving by the entries after it moving back into its slot.
 *
 * Why not a `Map`: a `Map` that churns makes a new hash table every so often, and V8 leaves the old
 * table (in the old generation, since the owner lives long) holding the entries that were in it and
 * pointing to the table that replaced it. Young-generation GCs take that garbage as live until the
 * next full GC, so every entry it held survives, with all it references, and so does the next
 * table: with 50 streams at a time on one session the relay's whole request survived each scavenge
 * (~5 MB a time, 15-20 ms pauses; docs/BENCHMARKS_LOG.md, eighteenth sitting). `SlotSet` is the
 * same answer for sets.
 *
 * Must never: keep a reference to an object it no longer holds (a vacated slot is null).
 */

/** Largest id an {@link IdTable} takes. */
const MAX_ID = 0x7fffffff;

/** Fewest slots; the table doubles when it is half full. */
const MIN_SLOTS = 16;

export class IdTable<T extends object> {
  /** The id in each slot; 0 is a free slot. */
  #ids = new Int32Array(MIN_SLOTS);
  /** The entry in each slot; null where the slot is free. */
  #items: Array<T | null> = new Array<T | null>(MIN_SLOTS).fill(null);
  #mask = MIN_SLOTS - 1;
  /** Bits of a 32-bit Fibonacci hash that make a slot index. */
  #shift = 32 - Math.log2(MIN_SLOTS);
  #size = 0;

  /** Number of entries. */
  get size(): number {
    return this.#size;
  }

  get(id: number): T | undefined {
    // 0 marks a free slot: it must not be found.
    if (!(id > 0)) return undefined;
    const ids = this.#ids;
    for (let i = this.#home(id);; i = (i + 1) & this.#mask) {
      const at = ids[i]!;
      if (at === id) return this.#items[i]!;
      if (at === 0) return undefined;
    }
  }

  has(id: number): boolean {
    return this.get(id) !== undefined;
  }

  /** Sets the entry of `id`, an integer from 1 to 2^31 - 1 (RangeError otherwise). */
  set(id: number, item: T): void {
    if (!Number.isInteger(id) || id < 1 || id > MAX_ID) {
      throw new RangeError(`IdTable id out of range: ${id}`);
    }
    if ((this.#size + 1) * 2 > this.#ids.length) this.#grow();
    const ids = this.#ids;
    let i = this.#home(id);
    while (ids[i] !== 0 && ids[i] !== id) i = (i + 1) & this.#mask;
    if (ids[i] === 0) this.#size++;
    ids[i] = id;
    this.#items[i] = item;
  }

  /** Removes the entry of `id`; false if there was none. */
  delete(id: number): boolean {
    if (!(id > 0)) return false;
    const ids = this.#ids;
    const items = this.#items;
    const mask = this.#mask;
    let hole = this.#home(id);
    while (ids[hole] !== id) {
      if (ids[hole] === 0) return false;
      hole = (hole + 1) & mask;
    }
    // Linear probing without tombstones: each entry after the hole, up to the next free slot,
    // moves back into it unless its home lies cyclically after the hole.
    for (let j = (hole + 1) & mask; ids[j] !== 0; j = (j + 1) & mask) {
      const home = this.#home(ids[j]!);
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (stays) continue;
      ids[hole] = ids[j]!;
      items[hole] = items[j]!;
      hole = j;
    }
    ids[hole] = 0;
    items[hole] = null;
    this.#size--;
    return true;
  }

  /**
   * The entries now, in an array of their own (in no particular order): for loops whose work adds
   * or removes entries.
   */
  toArray(): T[] {
    const out: T[] = [];
    const items = this.#items;
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      if (item !== null) out.push(item);
    }
    return out;
  }

  clear(): void {
    this.#ids.fill(0);
    this.#items.fill(null);
    this.#size = 0;
  }

  #home(id: number): number {
    return Math.imul(id, 0x9e3779b1) >>> this.#shift;
  }

  #grow(): void {
    const ids = this.#ids;
    const items = this.#items;
    const slots = ids.length * 2;
    this.#ids = new Int32Array(slots);
    this.#items = new Array<T | null>(slots).fill(null);
    this.#mask = slots - 1;
    this.#shift = 32 - Math.log2(slots);
    this.#size = 0;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] !== 0) this.set(ids[i]!, items[i]!);
    }
    // The old arrays are garbage now; emptied, they keep nothing alive until a full GC.
    items.fill(null);
  }
}
