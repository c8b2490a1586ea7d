/* signalfd (FD kind 15): the set of signals it reads (fdinfo's sigmask) in aux; made again with
 * the same set. Signals pending at the checkpoint are the process's (restored with it), not the
 * fd's: the restored signalfd reads them as the old one would have. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  (void)extra, (void)extra_cap;
  if (strcmp(p->target, "anon_inode:[signalfd]") != 0) return 1;
  const char *v = tg_res_field(p->fdinfo, "sigmask:");
  if (!v) {
    snprintf(err, errlen, "fd %d (signalfd) cannot be checkpointed: its fdinfo shows no sigmask", p->fd);
    return -1;
  }
  rec->kind = TG_FD_SIGNALFD;
  rec->aux = strtoull(v, NULL, 16); /* bit n-1: signal n */
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_SIGNALFD; }

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  sigset_t set;
  sigemptyset(&set);
  for (int s = 1; s <= 64; s++)
    if ((r->aux >> (s - 1)) & 1) sigaddset(&set, s); /* (the kernel kept no SIGKILL/SIGSTOP in it) */
  int fd = signalfd(-1, &set, SFD_CLOEXEC | ((r->open_flags & O_NONBLOCK) ? SFD_NONBLOCK : 0));
  if (fd < 0) { snprintf(err, errlen, "fd %u: signalfd: %s", r->fd, strerror(errno)); return -1; }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_signalfd = {.name = "signalfd", .describe = describe, .owns = owns, .open = open_one};
