/* Unit tests for files (paths, base64, the runner's input, output records) and outdir (the
 * restricted tier's walk, on real files). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "files.h"
#include "outdir.h"
#include "unit.h"

static const struct files_limits flim = {.in_files = 3,
                                         .in_bytes = 100,
                                         .out_files = 3,
                                         .out_bytes = 100,
                                         .path_max = 20,
                                         .path_depth = 3};

static void paths(void **state)
{
	static const char *const ok[] = {"a", "a/b/c", "data.csv", "..a", "a..", ".hidden", "é/x"};
	static const char *const bad[] = {"",      "/a",   "a/",      "a//b",
	                                  ".",     "..",   "./a",     "a/..",
	                                  "a/./b", "../a", "a/b/c/d", "123456789012345678901"};

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++)
		assert_null(files_path_problem(ok[i], strlen(ok[i]), &flim));
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		assert_non_null(files_path_problem(bad[i], strlen(bad[i]), &flim));
	assert_non_null(files_path_problem("a\0b", 3, &flim));
	/* Only n bytes count: no read past them. */
	assert_null(files_path_problem("ab/", 2, &flim));
}

static void base64(void **state)
{
	static const char *const bad[] = {
	    "Y", "YQ", "YQ=", "Y===", "Y=Q=", "YQ==\n", "YR==", "YWI=YWI=", "-_8=", "YW J"};
	unsigned char all[256], back[256];
	json_t *v;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		assert_int_equal(files_b64_size(bad[i], strlen(bad[i])), -1);
	assert_int_equal(files_b64_size("", 0), 0);
	assert_int_equal(files_b64_size("YQ==", 4), 1);
	assert_int_equal(files_b64_size("YWI=", 4), 2);
	assert_int_equal(files_b64_size("YWJj", 4), 3);
	for (int i = 0; i < 256; i++)
		all[i] = (unsigned char)i;
	for (size_t n = 0; n <= 256; n += 85) {
		v = files_b64_json(all, n);
		assert_non_null(v);
		const char *s = json_string_value(v);
		assert_int_equal(files_b64_size(s, strlen(s)), (long long)n);
		files_b64_decode(s, strlen(s), back);
		assert_memory_equal(all, back, n);
		json_decref(v);
	}
}

static void input_envelope(void **state)
{
	const struct api_limits lim = {.timeout = 1, .max_timeout = 2, .files = flim};
	const char *body =
	    "{\"script\": \"S\", \"stdin\": \"in\\n\", \"files\": [{\"path\": "
	    "\"d/a\", \"content\": \"YWI=\"}, {\"path\": \"b\", \"content\": \"\"}]}";
	const char *want = "{\"script\":1,\"stdin\":3,\"files\":[[\"d/a\",2],[\"b\",0]]}\nSin\nab";
	struct job job;
	struct err e;

	(void)state;
	assert_int_equal(api_request_parse(body, strlen(body), &lim, &job, &e), 0);
	assert_int_equal(job.input_len, strlen(want));
	assert_memory_equal(job.input, want, strlen(want));
	api_job_free(&job);
	assert_int_equal(api_job_script("S", 1, &job, &e), 0);
	want = "{\"script\":1,\"stdin\":0,\"files\":[]}\nS";
	assert_int_equal(job.input_len, strlen(want));
	assert_memory_equal(job.input, want, strlen(want));
	api_job_free(&job);
}

static void expect_records(const char *data, size_t len, int status, const char *code,
                           const char *in_message)
{
	struct err e;
	json_t *files = files_output_parse(data, len, &flim, &e);

	assert_null(files);
	assert_int_equal(e.status, status);
	assert_string_equal(e.code, code);
	if (in_message)
		assert_non_null(strstr(e.message, in_message));
}

#define RECORDS(s, ...) expect_records(s, sizeof(s) - 1, __VA_ARGS__)

static void records(void **state)
{
	const char good[] = "F 1 2\naxyF 3 0\nb/c";
	struct err e;
	json_t *files;
	char *text;

	(void)state;
	files = files_output_parse(good, sizeof(good) - 1, &flim, &e);
	assert_non_null(files);
	text = json_dumps(files, JSON_COMPACT);
	assert_string_equal(text, "[{\"path\":\"a\",\"content\":\"eHk=\"},"
	                          "{\"path\":\"b/c\",\"content\":\"\"}]");
	free(text);
	json_decref(files);
	files = files_output_parse("", 0, &flim, &e);
	assert_int_equal(json_array_size(files), 0);
	json_decref(files);
	/* Caps the init reported, and caps the records pass without saying so. */
	RECORDS("L files\n", 422, "output_too_large", "PYEXEC_OUTPUT_FILES");
	RECORDS("L bytes\n", 422, "output_too_large", "PYEXEC_OUTPUT_BYTES");
	RECORDS("L path\n", 422, "output_too_large", "PYEXEC_PATH_MAX");
	RECORDS("L depth\n", 422, "output_too_large", "PYEXEC_PATH_DEPTH");
	RECORDS("F 1 0\naF 1 0\nbF 1 0\ncF 1 0\nd", 422, "output_too_large", "PYEXEC_OUTPUT_FILES");
	RECORDS("F 1 60\na                                                            F 1 41\nb"
	        "                                         ",
	        422, "output_too_large", "PYEXEC_OUTPUT_BYTES");
	RECORDS("F 2 0\n\xff\xfe", 422, "invalid_output", "UTF-8");
	/* What no runner writes. */
	RECORDS("L other\n", 500, "internal", NULL);
	RECORDS("L files", 500, "internal", NULL);
	RECORDS("X 1 0\na", 500, "internal", NULL);
	RECORDS("F 1 5\nab", 500, "internal", NULL);
	RECORDS("F 01 0\na", 500, "internal", NULL);
	RECORDS("F -1 0\na", 500, "internal", NULL);
	RECORDS("F 1  0\na", 500, "internal", NULL);
	RECORDS("F 1 101\na", 500, "internal", NULL);
	RECORDS("F 21 0\naaaaaaaaaaaaaaaaaaaaa", 500, "internal", NULL);
	RECORDS("F 2 0\n..", 500, "internal", NULL);
	RECORDS("F 2 0\n/a", 500, "internal", NULL);
	RECORDS("F 0 0\n", 500, "internal", NULL);
	RECORDS("F 99999999999999999999999 0\n", 500, "internal", NULL);
	RECORDS("F", 500, "internal", NULL);
}

static void write_file(const char *path, const char *data)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(data, f);
	fclose(f);
}

/* The restricted tier's walk on real files: links, FIFOs and sockets skipped, order sorted. */
static void outdir_walk(void **state)
{
	char dir[] = "/tmp/pyexec-unit-XXXXXX", path[256];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct buf out;
	int sock;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/output", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/output/sub", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/output/sub/b", dir);
	write_file(path, "BB");
	snprintf(path, sizeof(path), "%s/output/a", dir);
	write_file(path, "A");
	snprintf(path, sizeof(path), "%s/output/link", dir);
	assert_int_equal(symlink("/etc/passwd", path), 0);
	snprintf(path, sizeof(path), "%s/output/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/output/sock", dir);
	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0);

	buf_init(&out, files_records_max(&flim));
	outdir_collect(dir, getuid(), &flim, &out);
	assert_int_equal(out.len, strlen("F 1 1\naAF 5 2\nsub/bBB"));
	assert_memory_equal(out.data, "F 1 1\naAF 5 2\nsub/bBB", out.len);
	buf_free(&out);
	/* Someone else's files are not the run's. */
	buf_init(&out, files_records_max(&flim));
	outdir_collect(dir, getuid() + 1, &flim, &out);
	assert_int_equal(out.len, 0);
	buf_free(&out);

	close(sock);
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	assert_int_equal(system(path), 0);
}

int unit_files(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(paths),          cmocka_unit_test(base64),
	    cmocka_unit_test(input_envelope), cmocka_unit_test(records),
	    cmocka_unit_test(outdir_walk),
	};
	return cmocka_run_group_tests_name("files", tests, NULL, NULL);
}
