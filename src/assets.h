/* assets: the files pyexecd serves as they are, compiled in from the tree by scripts/embed
 * (see the Makefile), so the binary alone serves them. */
#ifndef PYEXEC_ASSETS_H
#define PYEXEC_ASSETS_H

#include <stddef.h>

extern const unsigned char asset_openapi_json[]; /* docs/openapi.json */
extern const size_t asset_openapi_json_len;
extern const unsigned char asset_playground_html[]; /* web/playground.html */
extern const size_t asset_playground_html_len;
extern const unsigned char asset_playground_js[]; /* web/playground.js */
extern const size_t asset_playground_js_len;
extern const unsigned char asset_playground_css[]; /* web/playground.css */
extern const size_t asset_playground_css_len;

#endif
