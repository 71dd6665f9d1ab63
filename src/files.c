#include "files.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const char *files_path_problem(const char *p, size_t n, const struct files_limits *lim)
{
	size_t depth = 0;

	if (n == 0)
		return "is empty";
	if (n > lim->path_max)
		return "is too long";
	if (memchr(p, '\0', n))
		return "contains a NUL character";
	if (p[0] == '/')
		return "is absolute (it must be relative to the working directory)";
	for (size_t i = 0; i <= n;) {
		const char *slash = memchr(p + i, '/', n - i);
		size_t len = slash ? (size_t)(slash - (p + i)) : n - i;
		if (len == 0)
			return "has an empty component (a doubled or trailing '/')";
		if ((len == 1 && p[i] == '.') || (len == 2 && p[i] == '.' && p[i + 1] == '.'))
			return "has a '.' or '..' component";
		if (++depth > lim->path_depth)
			return "is nested too deeply";
		i += len + 1;
	}
	return NULL;
}

static int b64_value(unsigned char c)
{
	const char *at = c ? strchr(b64_chars, c) : NULL;

	return at ? (int)(at - b64_chars) : -1;
}

long long files_b64_size(const char *s, size_t n)
{
	size_t pad = 0;

	if (n % 4)
		return -1;
	if (n && s[n - 1] == '=')
		pad = n > 1 && s[n - 2] == '=' ? 2 : 1;
	for (size_t i = 0; i < n - pad; i++)
		if (b64_value((unsigned char)s[i]) < 0)
			return -1;
	/* The bits the padding leaves over must be zero: one encoding per content. */
	if (pad && (b64_value((unsigned char)s[n - pad - 1]) & (pad == 1 ? 0x3 : 0xf)))
		return -1;
	return (long long)(n / 4 * 3 - pad);
}

void files_b64_decode(const char *s, size_t n, unsigned char *out)
{
	for (size_t i = 0; i < n; i += 4) {
		unsigned v = 0;
		int k = 0;
		for (; k < 4 && s[i + k] != '='; k++)
			v = v << 6 | (unsigned)b64_value((unsigned char)s[i + k]);
		v <<= 6 * (4 - k);
		for (int j = 0; j < k - 1; j++)
			*out++ = (unsigned char)(v >> (16 - 8 * j));
	}
}

json_t *files_b64_json(const unsigned char *p, size_t n)
{
	size_t len = (n + 2) / 3 * 4;
	char *s = malloc(len + 1), *o = s;
	json_t *v;

	if (!s)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v3 = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
		              (i + 2 < n ? p[i + 2] : 0);
		*o++ = b64_chars[v3 >> 18 & 63];
		*o++ = b64_chars[v3 >> 12 & 63];
		*o++ = i + 1 < n ? b64_chars[v3 >> 6 & 63] : '=';
		*o++ = i + 2 < n ? b64_chars[v3 & 63] : '=';
	}
	v = json_stringn_nocheck(s, len);
	free(s);
	return v;
}

/* The numbers of a record header, "<a> <b>\n" or "<a>\n" after its letter and space; false
 * unless each is plain decimal without leading zeros and at most max. */
static bool parse_size(const char **p, const char *end, char stop, size_t max, size_t *out)
{
	const char *s = *p;
	size_t v = 0;

	if (s >= end || *s < '0' || *s > '9' || (*s == '0' && s + 1 < end && s[1] != stop))
		return false;
	for (; s < end && *s >= '0' && *s <= '9'; s++) {
		v = v * 10 + (size_t)(*s - '0');
		if (v > max)
			return false;
	}
	if (s >= end || *s != stop)
		return false;
	*p = s + 1;
	*out = v;
	return true;
}

size_t files_records_max(const struct files_limits *lim)
{
	/* Per file: "F <path length> <size>\n" and the path; then one "L <cap>\n". */
	return lim->out_bytes + lim->out_files * (lim->path_max + 48) + 16;
}

static int cap_error(const char *cap, const struct files_limits *lim, struct err *e)
{
	if (strcmp(cap, "files") == 0)
		return err_set(e, 422, "output_too_large",
		               "The script left more than %zu files under output/ (the "
		               "PYEXEC_OUTPUT_FILES cap); write fewer, for example one archive.",
		               lim->out_files);
	if (strcmp(cap, "bytes") == 0)
		return err_set(e, 422, "output_too_large",
		               "The files the script left under output/ hold more than %zu bytes "
		               "together (the PYEXEC_OUTPUT_BYTES cap); write less data.",
		               lim->out_bytes);
	if (strcmp(cap, "path") == 0)
		return err_set(e, 422, "output_too_large",
		               "The script left a file under output/ whose path is longer than %zu "
		               "bytes (the PYEXEC_PATH_MAX cap); use shorter names.",
		               lim->path_max);
	if (strcmp(cap, "depth") == 0)
		return err_set(e, 422, "output_too_large",
		               "The script left a file under output/ nested deeper than %zu "
		               "directories (the PYEXEC_PATH_DEPTH cap); use a flatter layout.",
		               lim->path_depth);
	return err_set(e, 500, "internal", "the run's output records name an unknown cap");
}

static int bad_records(struct err *e)
{
	return err_set(e, 500, "internal", "the run's output records are malformed");
}

/* One "F" record at *p: appended to files, or e filled. */
static int parse_file(const char **p, const char *end, const struct files_limits *lim,
                      size_t *total, json_t *files, struct err *e)
{
	size_t plen, size;
	const char *path;
	json_t *o;

	if (!parse_size(p, end, ' ', lim->path_max, &plen) ||
	    !parse_size(p, end, '\n', lim->out_bytes, &size) || (size_t)(end - *p) < plen ||
	    (size_t)(end - *p) - plen < size)
		return bad_records(e);
	path = *p;
	*p += plen;
	if (json_array_size(files) >= lim->out_files)
		return cap_error("files", lim, e);
	if (size > lim->out_bytes - *total)
		return cap_error("bytes", lim, e);
	*total += size;
	for (size_t i = 0; i < plen;) {
		int n = text_utf8_len((const unsigned char *)path + i, plen - i);
		if (n <= 0)
			return err_set(
			    e, 422, "invalid_output",
			    "The script left a file under output/ whose name is not UTF-8; "
			    "name files with UTF-8 text.");
		i += (size_t)n;
	}
	if (files_path_problem(path, plen, lim))
		return bad_records(e);
	o = json_pack("{s:s%,s:o}", "path", path, plen, "content",
	              files_b64_json((const unsigned char *)*p, size));
	*p += size;
	if (!o || json_array_append_new(files, o) < 0)
		return err_set(e, 500, "internal", "out of memory");
	return 0;
}

json_t *files_output_parse(const char *data, size_t len, const struct files_limits *lim,
                           struct err *e)
{
	const char *p = data, *end = data + len;
	json_t *files = json_array();
	size_t total = 0;
	int rc = 0;

	if (!files) {
		err_set(e, 500, "internal", "out of memory");
		return NULL;
	}
	while (rc == 0 && p < end) {
		char kind = *p, cap[8] = "";
		const char *nl;
		if (end - p < 2 || p[1] != ' ' || (kind != 'F' && kind != 'L')) {
			rc = bad_records(e);
			break;
		}
		p += 2;
		if (kind == 'F') {
			rc = parse_file(&p, end, lim, &total, files, e);
			continue;
		}
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl && nl - p < (long)sizeof(cap))
			memcpy(cap, p, (size_t)(nl - p));
		rc = nl ? cap_error(cap, lim, e) : bad_records(e);
	}
	if (rc < 0) {
		json_decref(files);
		return NULL;
	}
	return files;
}
