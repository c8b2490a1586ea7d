/* A string made safe to put between double quotes in JSON (quotes, backslashes and control
 * characters escaped), cut to fit cap. For the agent's replies and the lazy loader's progress. */
#ifndef TG_JSONESC_H
#define TG_JSONESC_H
#include <stddef.h>
__attribute__((visibility("hidden"))) void tg_json_escape(const char *in, char *out, size_t cap);
#endif
