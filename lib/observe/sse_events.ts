/**
 * @module sse_events
 * The data of each server-sent event in a text stream fed in arbitrary pieces: the part of the
 * WHATWG event-stream interpretation that token counting needs (`data` fields joined by line
 * feeds, dispatched at a blank line; comments and other fields ignored; CRLF, LF or CR line ends,
 * a CR and LF split between pieces counting once; one leading BOM dropped).
 *
 * Must never: keep more than `maxChars` of one event (a longer line or event is skipped up to
 * its end, and later events still count), or throw on any input.
 */

/** Receives each event's data. */
export type SseDataSink = (data: string) => void;

export class SseEvents {
  readonly #sink: SseDataSink;
  readonly #maxChars: number;
  /** The start of a line whose end has not arrived yet. */
  #line = "";
  /** The current event's data lines so far, joined by "\n"; null before its first data line. */
  #data: string | null = null;
  /** The line being read is too long: skip to its end. */
  #skipLine = false;
  /** The event being read grew too long: skip to the blank line that ends it. */
  #skipEvent = false;
  /** The last piece ended in CR: an LF starting the next one ends no further line. */
  #afterCr = false;
  #started = false;

  constructor(sink: SseDataSink, maxChars: number) {
    this.#sink = sink;
    this.#maxChars = maxChars;
  }

  feed(text: string): void {
    const n = text.length;
    let i = 0;
    if (!this.#started && n > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) i = 1;
    }
    if (this.#afterCr && i < n) {
      this.#afterCr = false;
      if (text.charCodeAt(i) === 10) i++;
    }
    while (i < n) {
      let j = i;
      let c = 0;
      while (j < n && (c = text.charCodeAt(j)) !== 10 && c !== 13) j++;
      if (j === n) {
        if (this.#skipLine) return;
        this.#line = this.#line === "" ? text.slice(i) : this.#line + text.slice(i);
        if (this.#line.length > this.#maxChars) this.#tooLong(true);
        return;
      }
      if (this.#skipLine) {
        this.#skipLine = false;
      } else {
        const line = this.#line === "" ? text.slice(i, j) : this.#line + text.slice(i, j);
        this.#line = "";
        if (line.length > this.#maxChars) this.#tooLong(false);
        else this.#onLine(line);
      }
      if (c === 13) {
        if (j + 1 < n) {
          if (text.charCodeAt(j + 1) === 10) j++;
        } else {
          this.#afterCr = true;
        }
      }
      i = j + 1;
    }
  }

  /** Drops the event being read; `rest` also skips the remainder of the current line. */
  #tooLong(rest: boolean): void {
    this.#line = "";
    this.#data = null;
    this.#skipEvent = true;
    this.#skipLine = rest;
  }

  #onLine(line: string): void {
    if (line === "") {
      const data = this.#data;
      this.#data = null;
      this.#skipEvent = false;
      if (data !== null) this.#sink(data);
      return;
    }
    // "data" or "data:...": any other field, and a comment (":..."), changes nothing counted.
    if (this.#skipEvent || !line.startsWith("data")) return;
    let value: string;
    if (line.length === 4) value = "";
    else if (line.charCodeAt(4) !== 58) return; // "dataX...": another field
    else value = line.slice(line.charCodeAt(5) === 32 ? 6 : 5);
    const data = this.#data === null ? value : `${this.#data}\n${value}`;
    if (data.length > this.#maxChars) this.#tooLong(false);
    else this.#data = data;
  }
}
