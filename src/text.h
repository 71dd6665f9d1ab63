/* text: turns bytes from a jail into text a JSON string may hold. */
#ifndef PYEXEC_TEXT_H
#define PYEXEC_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Returns a malloc'd copy of s[0..n) that is valid UTF-8: each invalid sequence becomes U+FFFD.
 * When cut is true the input was truncated, so an incomplete sequence at its very end is dropped
 * rather than replaced. NUL bytes are kept. *out_len gets the length; NULL when out of memory. */
char *text_utf8_clean(const char *s, size_t n, bool cut, size_t *out_len);

/* Length of the valid UTF-8 sequence starting at s (at most n bytes): 1-4, 0 when invalid,
 * -1 when it is a valid start that the end of input cuts short. */
int text_utf8_len(const unsigned char *s, size_t n);

#endif
