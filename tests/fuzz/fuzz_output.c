/* libFuzzer harness: everything the server reads from a jail (the result channel, stdout and
 * the exit status, the records of output files) through frame parsing, JSON checking, UTF-8
 * cleaning, record parsing and the response builder. Whatever the jail sends, the answer must be
 * one valid JSON object.
 * Input: 2 bytes of result-channel length, 1 byte of flags, 1 byte of exit code, then the
 * result channel and stdout; with flag 16 the stdout bytes are also the output records. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct api_limits lim = {10, 60, 4096, 512, {4, 64, 4, 64, 32, 4}};
	struct job job = {.timeout = 3};
	struct run_result run;
	struct response r;
	size_t chan_len;
	json_t *parsed;
	int flags;

	if (size < 4)
		return 0;
	chan_len = (size_t)data[0] << 8 | data[1];
	memset(&run, 0, sizeof(run));
	run.ready = data[2] & 1;
	run.end = (enum run_end)((data[2] >> 1) & 3);
	run.memory_hit = data[2] & 8;
	run.exit_code = data[3];
	flags = data[2];
	data += 4, size -= 4;
	if (chan_len > size)
		chan_len = size;
	buf_init(&run.chan, 8192);
	buf_init(&run.out, 512);
	buf_append(&run.chan, data, chan_len);
	buf_append(&run.out, data + chan_len, size - chan_len);
	buf_init(&run.files, 1024);
	if (flags & 16)
		buf_append(&run.files, data + chan_len, size - chan_len);
	if (api_outcome_response(&run, &job, &lim, &r) < 0)
		abort();
	if (json_check(r.body, r.len, 4096) != JSON_OK)
		abort();
	parsed = json_loadb(r.body, r.len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, NULL);
	/* jansson refuses numbers too big for a double, which the contract passes through. */
	if (parsed && !json_is_object(parsed))
		abort();
	if (r.status == 200 && parsed && json_object_size(parsed) != 2 &&
	    !(json_object_size(parsed) == 3 && json_object_get(parsed, "files")))
		abort();
	json_decref(parsed);
	api_response_free(&r);
	buf_free(&run.chan);
	buf_free(&run.out);
	buf_free(&run.files);
	return 0;
}
