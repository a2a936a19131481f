/**
 * @module syntax
 * The HTTP/1.1 lexical rules that both the server's request parser and the client's response
 * parser check, so the two sides accept the same names.
 *
 * Pure: no I/O. Must never: loosen a rule for one side only (a name one side accepts and the other
 * refuses is a request-smuggling seam).
 */

/** An RFC 9110 §5.6.2 token: a method or a header field name. */
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
