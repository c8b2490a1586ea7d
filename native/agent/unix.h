/* Unix sockets whose both ends are in the process (socketpair, or a connected pair): FD kind 9 and
 * SOCKET_DATA records (docs/format.md). The restore side is native/restore/unix.c.
 *
 * Use: tg_unix_begin(); tg_describe_fd() on every fd (it calls tg_unix_describe for sockets);
 * then tg_unix_end(), which checks that every socket's peer is one of them and, with emit set,
 * records what is queued in each (peeked at with SO_PEEK_OFF: nothing is consumed). Raw syscalls
 * and static memory only: this runs in the park handler with every thread parked. */
#ifndef TG_AGENT_UNIX_H
#define TG_AGENT_UNIX_H
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "../common/image.h"

/* 1: not a Unix socket (the caller handles it); 0: a supported one, rec and extra filled;
 * -1: refused, err names the socket (fd, type, address, peer) and the way out. */
int tg_unix_describe(int fd, const struct stat *st, struct tg_rec_fd *rec, char *extra, size_t extra_cap,
                     char *err, size_t errlen) __attribute__((visibility("hidden")));

void tg_unix_begin(void) __attribute__((visibility("hidden")));

/* Writes one record (payload a || b); 0 or -1. */
typedef int (*tg_emit_fn)(void *ctx, uint32_t type, const void *a, size_t al, const void *b, size_t bl);
/* emit NULL: only the peer check (the application may be running). 0, or -1 with err. */
int tg_unix_end(tg_emit_fn emit, void *ctx, char *err, size_t errlen) __attribute__((visibility("hidden")));
#endif
