/* libFuzzer harness: request bytes from the network, through api's parsing and validation.
 * Input: a Content-Type line, a newline, then the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct api_limits lim = {10, 60, 1 << 20, 512, {4, 4096, 4, 4096, 64, 4}};
	const uint8_t *nl = memchr(data, '\n', size);
	size_t ct_len = nl ? (size_t)(nl - data) : 0;
	char *ct = malloc(ct_len + 1);
	struct response r;
	struct job job;
	struct err e;

	memcpy(ct, data, ct_len);
	ct[ct_len] = '\0';
	(void)api_content_type_ok(ct);
	free(ct);
	if (nl) {
		data = nl + 1;
		size -= ct_len + 1;
	}
	if (api_request_parse((const char *)data, size, &lim, &job, &e) == 0) {
		if (!job.script || job.script_len == 0 || !(job.timeout > 0 && job.timeout <= 60))
			abort();
		api_job_free(&job);
		return 0;
	}
	/* Every refusal is a well-formed contract error. */
	if (e.status != 400 || api_error_response(&r, e.status, e.code, e.message) < 0 ||
	    json_check(r.body, r.len, 8) != JSON_OK)
		abort();
	api_response_free(&r);
	return 0;
}
