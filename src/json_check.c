#include "json_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

struct cursor {
	const unsigned char *p, *end;
	int depth, max_depth;
	enum json_verdict why; /* set with the first failure that is not a grammar error */
};

static bool value(struct cursor *c);

static void skip_ws(struct cursor *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static bool eat(struct cursor *c, char ch)
{
	skip_ws(c);
	if (c->p < c->end && *c->p == (unsigned char)ch) {
		c->p++;
		return true;
	}
	return false;
}

static bool literal(struct cursor *c, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
		return false;
	c->p += n;
	return true;
}

static bool is_digit(const struct cursor *c)
{
	return c->p < c->end && *c->p >= '0' && *c->p <= '9';
}

static bool digits(struct cursor *c)
{
	if (!is_digit(c))
		return false;
	while (is_digit(c))
		c->p++;
	return true;
}

/* Whether the number text [start, c->p) fits a double, the type most parsers read it into. */
static bool number_fits(struct cursor *c, const unsigned char *start)
{
	size_t len = (size_t)(c->p - start);

	if (len <= JSON_NUMBER_TEXT_MAX) {
		char text[JSON_NUMBER_TEXT_MAX + 1];

		memcpy(text, start, len);
		text[len] = '\0';
		if (isfinite(strtod(text, NULL)))
			return true;
	}
	c->why = JSON_NUMBER_BIG;
	return false;
}

static bool number(struct cursor *c)
{
	const unsigned char *start = c->p;

	if (c->p < c->end && *c->p == '-')
		c->p++;
	if (c->p < c->end && *c->p == '0')
		c->p++;
	else if (!digits(c))
		return false;
	if (c->p < c->end && *c->p == '.') {
		c->p++;
		if (!digits(c))
			return false;
	}
	if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
		c->p++;
		if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
			c->p++;
		if (!digits(c))
			return false;
	}
	return number_fits(c, start);
}

static bool escape(struct cursor *c)
{
	if (c->p >= c->end)
		return false;
	if (strchr("\"\\/bfnrt", *c->p) && *c->p) {
		c->p++;
		return true;
	}
	if (*c->p != 'u' || c->end - c->p < 5)
		return false;
	for (int i = 1; i <= 4; i++)
		if (!strchr("0123456789abcdefABCDEF", c->p[i]) || !c->p[i])
			return false;
	c->p += 5;
	return true;
}

static bool string(struct cursor *c)
{
	c->p++; /* the opening quote */
	while (c->p < c->end) {
		unsigned char ch = *c->p;
		if (ch == '"') {
			c->p++;
			return true;
		}
		if (ch < 0x20)
			return false;
		if (ch == '\\') {
			c->p++;
			if (!escape(c))
				return false;
			continue;
		}
		int len = text_utf8_len(c->p, (size_t)(c->end - c->p));
		if (len <= 0)
			return false;
		c->p += len;
	}
	return false;
}

static bool members(struct cursor *c, char close, bool keyed)
{
	if (++c->depth > c->max_depth) {
		c->why = JSON_TOO_DEEP;
		return false;
	}
	c->p++; /* the opening bracket */
	if (eat(c, close))
		goto done;
	do {
		if (keyed) {
			skip_ws(c);
			if (c->p >= c->end || *c->p != '"' || !string(c) || !eat(c, ':'))
				return false;
		}
		if (!value(c))
			return false;
	} while (eat(c, ','));
	if (!eat(c, close))
		return false;
done:
	c->depth--;
	return true;
}

static bool value(struct cursor *c)
{
	skip_ws(c);
	if (c->p >= c->end)
		return false;
	switch (*c->p) {
	case '{':
		return members(c, '}', true);
	case '[':
		return members(c, ']', false);
	case '"':
		return string(c);
	case 't':
		return literal(c, "true");
	case 'f':
		return literal(c, "false");
	case 'n':
		return literal(c, "null");
	default:
		return number(c);
	}
}

enum json_verdict json_check(const char *s, size_t n, int max_depth)
{
	struct cursor c = {(const unsigned char *)s, (const unsigned char *)s + n, 0, max_depth,
	                   JSON_INVALID};

	if (!value(&c))
		return c.why;
	skip_ws(&c);
	return c.p == c.end ? JSON_OK : JSON_INVALID;
}
