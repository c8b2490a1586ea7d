/* eventfd (FD kind 7): its counter and semaphore mode from fdinfo; made again with that count. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  (void)extra, (void)extra_cap, (void)err, (void)errlen;
  if (strcmp(p->target, "anon_inode:[eventfd]") != 0) return 1;
  rec->kind = TG_FD_EVENTFD;
  const char *v;
  if ((v = tg_res_field(p->fdinfo, "eventfd-count:"))) rec->aux = strtoull(v, NULL, 16);
  if ((v = tg_res_field(p->fdinfo, "eventfd-semaphore:")) && strtoull(v, NULL, 10)) rec->id.reserved = 1;
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_EVENTFD; }

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  int fd = eventfd((unsigned)r->aux, EFD_CLOEXEC | ((r->open_flags & O_NONBLOCK) ? EFD_NONBLOCK : 0) | (r->id.reserved ? EFD_SEMAPHORE : 0));
  if (fd < 0) { snprintf(err, errlen, "fd %u: eventfd: %s", r->fd, strerror(errno)); return -1; }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_eventfd = {.name = "eventfd", .describe = describe, .owns = owns, .open = open_one};
