/* A whole small file (/proc) into buf, NUL-terminated, with raw syscalls only (safe in the agent's
 * park handler and snapshot child). Returns the length, or -errno. */
#ifndef TG_READFILE_H
#define TG_READFILE_H
#include <stddef.h>
__attribute__((visibility("hidden"))) long tg_read_file(const char *path, char *buf, size_t cap);
#endif
