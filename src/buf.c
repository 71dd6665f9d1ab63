#include "buf.h"

#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
}

static int buf_reserve(struct buf *b, size_t need)
{
	size_t n = b->alloc ? b->alloc : 4096;
	char *p;

	if (need + 1 <= b->alloc)
		return 0;
	while (n < need + 1)
		n *= 2;
	p = realloc(b->data, n);
	if (!p)
		return -1;
	b->data = p;
	b->alloc = n;
	return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
	size_t room = b->limit - b->len;

	if (n > room) {
		b->truncated = true;
		n = room;
	}
	if (buf_reserve(b, b->len + n) < 0)
		return -1;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}
