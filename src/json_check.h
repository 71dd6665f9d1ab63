/* json_check: validates JSON text without building it. jansson cannot hold integers beyond
 * 64 bits nor every double, but Python's json writes them, and the result must go out exactly as
 * the runner encoded it; so the result is checked here for grammar, UTF-8 and depth only. */
#ifndef PYEXEC_JSON_CHECK_H
#define PYEXEC_JSON_CHECK_H

#include <stdbool.h>
#include <stddef.h>

/* A number whose text is longer than this is refused: no number Python's json writes comes
 * near it, and Java's Jackson refuses numbers over 1000 characters by default. */
#define JSON_NUMBER_TEXT_MAX 400

enum json_verdict {
	JSON_OK,
	JSON_INVALID,   /* not exactly one RFC 8259 value, or its strings are not UTF-8 */
	JSON_TOO_DEEP,  /* arrays and objects nest deeper than max_depth */
	JSON_NUMBER_BIG /* a number a double cannot hold, or longer than JSON_NUMBER_TEXT_MAX */
};

/* Checks that s[0..n) is exactly one JSON value (surrounding whitespace allowed) that common
 * parsers read with their default limits: strings valid UTF-8, nesting at most max_depth deep,
 * every number within a double's range (Go's and Rust's serde_json's defaults fail on any
 * other; Python's json fails on integers over 4300 digits). */
enum json_verdict json_check(const char *s, size_t n, int max_depth);

#endif
