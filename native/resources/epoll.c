/* epoll sets (FD kind 8): the interest list (watched fd, events, data) from fdinfo, without the
 * agent's own fds; made empty, and filled once every fd is in place. A set shared by processes of
 * a tree is made once (tree-fds.c) and each process adds the entries its own fds registered. */
#include "resource.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "../common/sys.h"

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  if (strcmp(p->target, "anon_inode:[eventpoll]") != 0) return 1;
  rec->kind = TG_FD_EPOLL;
  size_t used = 0;
  for (const char *q = strstr(p->fdinfo, "tfd:"); q; q = strstr(q + 4, "tfd:")) {
    struct tg_epoll_entry e;
    const char *ev = strstr(q, "events:"), *da = strstr(q, "data:");
    if (!ev || !da) break;
    e.tfd = (uint32_t)strtoul(q + 4, NULL, 10);
    e.events = (uint32_t)strtoul(ev + 7, NULL, 16);
    e.data = strtoull(da + 5, NULL, 16);
    if (p->is_hidden((int)e.tfd)) continue;
    /* an entry whose fd here is not the file it watches: registered by another process sharing
     * the set (a process tree), or the fd was closed and its number reused: not this process's to
     * add back (TG_EPOLL_OTHER) */
    const char *in = strstr(q, "ino:"), *nx = strstr(q + 4, "tfd:");
    struct stat st;
    if (in && (!nx || in < nx) && (tg_sys2(SYS_fstat, (int)e.tfd, &st) != 0 || (uint64_t)st.st_ino != strtoull(in + 4, NULL, 16)))
      e.tfd |= TG_EPOLL_OTHER;
    if (used + sizeof e > extra_cap) { snprintf(err, errlen, "fd %d: epoll set too large", p->fd); return -1; }
    memcpy(extra + used, &e, sizeof e);
    used += sizeof e;
  }
  rec->extra_len = (uint32_t)used;
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_EPOLL; }

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) { snprintf(err, errlen, "fd %u: epoll_create1: %s", rc->fds[i].r.fd, strerror(errno)); return -1; }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

/* the interest list, now that the watched fds exist at their numbers */
static int settle(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  for (size_t k = 0; k + sizeof(struct tg_epoll_entry) <= f->r.extra_len; k += sizeof(struct tg_epoll_entry)) {
    struct tg_epoll_entry e;
    memcpy(&e, f->extra + k, sizeof e);
    if (e.tfd & TG_EPOLL_OTHER) continue; /* another process's entry (a set shared in a tree: it adds it) */
    struct epoll_event ev = {.events = e.events, .data.u64 = e.data};
    /* (EEXIST: a set shared by processes of a tree, made once, where the same file at the same fd
     * number was added by another of them) */
    if (epoll_ctl((int)f->r.fd, EPOLL_CTL_ADD, (int)e.tfd, &ev) != 0 && errno != EEXIST) {
      snprintf(err, errlen, "fd %u: epoll_ctl(ADD fd %u): %s", f->r.fd, e.tfd, strerror(errno));
      return -1;
    }
  }
  return 0;
}

const struct tg_fd_ops tg_fd_epoll = {.name = "epoll", .describe = describe, .owns = owns, .open = open_one, .settle = settle};
