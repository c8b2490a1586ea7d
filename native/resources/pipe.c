/* Pipes with both ends in the process (FD kinds 4 and 5, PIPE_DATA): the capture checks that
 * every pipe's other end is ours and keeps what is buffered in it (tee into a private pipe:
 * nothing is consumed); the restore makes each pipe once, at its first end's record, refills it
 * and hands each end to its records. An end alone whose other end is closed everywhere is a pipe of
 * the process too (made with that end closed). In a process tree (tg_res_tree) an end may be alone in the
 * process: the daemon checks the tree, and the restorer makes such a pipe once for every process
 * (rc->shared) before the tree is cloned. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/sys.h"

#define PIPE_DATA_CAP (1u << 16)

static int is_pipe(uint32_t k) { return k == TG_FD_PIPE_R || k == TG_FD_PIPE_W; }

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  (void)extra, (void)extra_cap, (void)err, (void)errlen;
  if (!S_ISFIFO(p->st->st_mode) || strncmp(p->target, "pipe:[", 6) != 0) return 1;
  rec->kind = (rec->open_flags & O_ACCMODE) == O_WRONLY ? TG_FD_PIPE_W : TG_FD_PIPE_R;
  rec->aux = p->st->st_ino;
  long sz = tg_sys2(SYS_fcntl, p->fd, F_GETPIPE_SZ);
  rec->id.size = sz > 0 ? (uint64_t)sz : 65536;
  return 0;
}

/* An end whose other end is closed everywhere (the writer of a read end, or the reader of a write
 * end, is gone): the pipe is the process's alone, and the restore makes it with that end closed
 * (open_pipe), as it was. The kernel says so in poll: POLLHUP on a read end without writers,
 * POLLERR on a write end without readers. */
static int widowed(const struct tg_fd_seen *s) {
  struct pollfd p = {(int)s->fd, s->kind == TG_FD_PIPE_R ? POLLIN : POLLOUT, 0};
  if (tg_sys3(SYS_poll, &p, 1, 0) < 0) return 0;
  return s->kind == TG_FD_PIPE_R ? (p.revents & POLLHUP) != 0 : (p.revents & POLLERR) != 0;
}

static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  static char data[PIPE_DATA_CAP];
  for (int i = 0; i < nseen; i++) {
    if (!is_pipe(seen[i].kind)) continue;
    int other = 0;
    for (int j = 0; j < nseen; j++)
      if (is_pipe(seen[j].kind) && seen[j].aux == seen[i].aux && seen[j].kind != seen[i].kind) other = 1;
    if (!other && !tg_res_tree && !widowed(&seen[i])) {
      snprintf(err, errlen,
               "fd %u (pipe:[%llu], %s end): the other end of this pipe is open in a process outside this "
               "checkpoint (outside the app, or started by the app since the daemon looked: try again)",
               seen[i].fd, (unsigned long long)seen[i].aux, seen[i].kind == TG_FD_PIPE_R ? "read" : "write");
      return -1;
    }
  }
  if (!emit) return 0;
  for (int i = 0; i < nseen; i++) {
    if (seen[i].kind != TG_FD_PIPE_R) continue;
    int captured = 0;
    for (int j = 0; j < i; j++) if (seen[j].aux == seen[i].aux && seen[j].kind == TG_FD_PIPE_R) captured = 1;
    if (captured) continue; /* data is captured once per pipe, through its first read end */
    int tp[2];
    long e = tg_sys2(SYS_pipe2, tp, O_CLOEXEC | O_NONBLOCK);
    if (e != 0) { snprintf(err, errlen, "pipe2: %s", strerror((int)-e)); return -1; }
    tg_sys3(SYS_fcntl, tp[1], F_SETPIPE_SZ, 1 << 20);
    long got = tg_sys4(SYS_tee, seen[i].fd, tp[1], 1 << 20, SPLICE_F_NONBLOCK);
    if (got < 0 && got != -EAGAIN) {
      snprintf(err, errlen, "fd %u: tee: %s", seen[i].fd, strerror((int)-got));
      tg_sys1(SYS_close, tp[0]);
      tg_sys1(SYS_close, tp[1]);
      return -1;
    }
    long len = 0;
    while (got > 0 && len < (long)sizeof data) {
      long r = tg_sys3(SYS_read, tp[0], data + len, sizeof data - (size_t)len);
      if (r <= 0) break;
      len += r;
    }
    tg_sys1(SYS_close, tp[0]);
    tg_sys1(SYS_close, tp[1]);
    if (got > (long)sizeof data) { snprintf(err, errlen, "fd %u: more than %zu bytes buffered in a pipe", seen[i].fd, sizeof data); return -1; }
    uint64_t ino = seen[i].aux;
    int we = emit(ctx, TG_REC_PIPE_DATA, &ino, sizeof ino, data, (size_t)(len > 0 ? len : 0));
    if (we != 0) {
      snprintf(err, errlen, "writing the image: %s", strerror(we));
      return -1;
    }
  }
  return 0;
}

static int open_pipe(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  if (rc->tmp[i] >= 0) return 0; /* made at an earlier end's record */
  for (size_t j = 0; j < i; j++)
    if (rc->fds[j].r.aux == r->aux && is_pipe(rc->fds[j].r.kind) && !rc->fds[j].r.reserved) return 0; /* made at that earlier record: its ends went to the first record of each end */
  int p[2];
  const struct tg_shared_pipe *sh = NULL;
  for (size_t k = 0; k < rc->nshared; k++) if (rc->shared[k].ino == r->aux) sh = &rc->shared[k];
  if (sh) {
    /* made (and refilled) before the tree was cloned: this process takes its own copies of the ends */
    p[0] = fcntl(sh->r, F_DUPFD_CLOEXEC, 0);
    p[1] = fcntl(sh->w, F_DUPFD_CLOEXEC, 0);
    if (p[0] < 0 || p[1] < 0) { snprintf(err, errlen, "pipe:[%llu]: dup: %s", (unsigned long long)r->aux, strerror(errno)); return -1; }
  } else if (pipe2(p, O_CLOEXEC) != 0) { snprintf(err, errlen, "pipe2: %s", strerror(errno)); return -1; }
  /* a pipe smaller than asked still works; data larger than it would fail to go back (below) */
  if (!sh && r->id.size > 65536) (void)fcntl(p[1], F_SETPIPE_SZ, (int)r->id.size);
  for (size_t k = 0; !sh && k < rc->npipes; k++) {
    if (rc->pipes[k].ino != r->aux) continue;
    size_t w = 0;
    while (w < rc->pipes[k].len) {
      ssize_t n = write(p[1], rc->pipes[k].data + w, rc->pipes[k].len - w);
      if (n <= 0) {
        snprintf(err, errlen, "refilling pipe:[%llu]: %s", (unsigned long long)r->aux, n < 0 ? strerror(errno) : "short write");
        close(p[0]);
        close(p[1]);
        return -1;
      }
      w += (size_t)n;
    }
  }
  int rh = tg_res_high(p[0], rc->tmp_base, err, errlen), wh = tg_res_high(p[1], rc->tmp_base, err, errlen);
  if (rh < 0 || wh < 0) return -1;
  /* hand each end to the first non-dup record of that end */
  int gave_r = 0, gave_w = 0;
  for (size_t j = i; j < rc->nfds; j++) {
    const struct tg_rec_fd *q = &rc->fds[j].r;
    if (q->aux != r->aux || q->reserved || !is_pipe(q->kind)) continue;
    if (q->kind == TG_FD_PIPE_R && !gave_r) { rc->tmp[j] = rh; gave_r = 1; fcntl(rh, F_SETFL, tg_res_status_flags(q->open_flags)); }
    else if (q->kind == TG_FD_PIPE_W && !gave_w) { rc->tmp[j] = wh; gave_w = 1; fcntl(wh, F_SETFL, tg_res_status_flags(q->open_flags)); }
  }
  if (!gave_r) close(rh);
  if (!gave_w) close(wh);
  return 0;
}

/* The restorer, before it clones a process tree: one pipe for inode ino, refilled with data (its
 * size as the record says). 0, or -1 with err. */
TG_RES_HIDDEN int tg_pipe_make_shared(struct tg_shared_pipe *out, uint64_t ino, uint64_t size, const char *data, size_t len,
                                      int tmp_base, char *err, size_t errlen) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) { snprintf(err, errlen, "pipe2: %s", strerror(errno)); return -1; }
  if (size > 65536) (void)fcntl(p[1], F_SETPIPE_SZ, (int)size);
  for (size_t w = 0; w < len;) {
    ssize_t n = write(p[1], data + w, len - w);
    if (n <= 0) {
      snprintf(err, errlen, "refilling pipe:[%llu]: %s", (unsigned long long)ino, n < 0 ? strerror(errno) : "short write");
      close(p[0]);
      close(p[1]);
      return -1;
    }
    w += (size_t)n;
  }
  out->ino = ino;
  out->r = tg_res_high(p[0], tmp_base, err, errlen);
  out->w = tg_res_high(p[1], tmp_base, err, errlen);
  return out->r < 0 || out->w < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_pipe = {.name = "pipe", .describe = describe, .end = end, .owns = is_pipe, .open = open_pipe};
