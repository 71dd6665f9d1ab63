#include "static.h"

#include <microhttpd.h>
#include <string.h>

#include "assets.h"

/* The page may run its own script and style and talk to its own origin; nothing else, and no
 * other site may frame it. Inline script and style are refused, so an injected tag is inert. */
#define CSP                                                                                        \
	"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "            \
	"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

struct static_file {
	const char *url;
	const char *type;
	const unsigned char *data;
	const size_t *len;
	bool playground; /* served only when the playground is on */
};

static const struct static_file files[] = {
    {"/openapi.json", "application/json", asset_openapi_json, &asset_openapi_json_len, false},
    {"/", "text/html; charset=utf-8", asset_playground_html, &asset_playground_html_len, true},
    {"/playground.js", "text/javascript; charset=utf-8", asset_playground_js,
     &asset_playground_js_len, true},
    {"/playground.css", "text/css; charset=utf-8", asset_playground_css, &asset_playground_css_len,
     true},
};

const struct static_file *static_find(const char *url, bool playground)
{
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (strcmp(url, files[i].url) == 0 && (playground || !files[i].playground))
			return &files[i];
	return NULL;
}

struct MHD_Response *static_response(const struct static_file *f)
{
	/* The bytes are static: MHD reads them in place. */
	struct MHD_Response *mr =
	    MHD_create_response_from_buffer(*f->len, (void *)f->data, MHD_RESPMEM_PERSISTENT);

	if (!mr)
		return NULL;
	MHD_add_response_header(mr, "Content-Type", f->type);
	MHD_add_response_header(mr, "Content-Security-Policy", CSP);
	MHD_add_response_header(mr, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(mr, "Referrer-Policy", "no-referrer");
	/* A new build's page is fetched again rather than taken from a cache. */
	MHD_add_response_header(mr, "Cache-Control", "no-cache");
	return mr;
}
