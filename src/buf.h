/* buf: a bounded byte buffer. It keeps at most `limit` bytes and remembers that more came, so
 * hostile output can never grow the server's memory past the cap. The buffer owns data; free it
 * with buf_free. data is always NUL-terminated for convenience (the NUL is not counted). */
#ifndef PYEXEC_BUF_H
#define PYEXEC_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t alloc;
	size_t limit;
	bool truncated; /* bytes beyond limit were offered and dropped */
};

void buf_init(struct buf *b, size_t limit);
/* Appends what fits under the limit; returns -1 only when memory runs out. */
int buf_append(struct buf *b, const void *p, size_t n);
void buf_free(struct buf *b);

#endif
