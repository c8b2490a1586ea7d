/* Rebuilds the application's fd table from FD and PIPE_DATA records: the restore side of
 * native/agent/fds.c. Every object is first created at a temporary high fd, then moved into place,
 * so that creating one never lands on a number another still needs. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

int tg_check_file(const char *path, const struct tg_file_id *id, int fd, char *err, size_t errlen) {
  struct stat st;
  if (fstat(fd, &st) != 0) { snprintf(err, errlen, "%s: fstat: %s", path, strerror(errno)); return -1; }
  if (st.st_dev != id->dev || st.st_ino != id->ino) {
    snprintf(err, errlen, "%s is not the file the application had open at the checkpoint (it was replaced: inode %llu, was %llu)",
             path, (unsigned long long)st.st_ino, (unsigned long long)id->ino);
    return -1;
  }
  return 0;
}

static int high(int fd, int tmp_base, char *err, size_t errlen) {
  if (fd < 0) return -1;
  int h = fcntl(fd, F_DUPFD_CLOEXEC, tmp_base);
  if (h < 0) snprintf(err, errlen, "fcntl(F_DUPFD): %s", strerror(errno));
  close(fd);
  return h;
}

static int status_flags(uint32_t open_flags) { return (int)(open_flags & (O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME)); }

const char *tg_stdio_log;

int tg_restore_fds(struct image *img, char *err, size_t errlen) {
  int tmp_base = 0;
  for (size_t i = 0; i < img->nfds; i++) if ((int)img->fds[i].r.fd >= tmp_base) tmp_base = (int)img->fds[i].r.fd + 1;
  tmp_base += 1;
  int *tmp = calloc(img->nfds ? img->nfds : 1, sizeof *tmp);
  if (!tmp) { snprintf(err, errlen, "out of memory"); return -1; }
  for (size_t i = 0; i < img->nfds; i++) tmp[i] = -1;
  for (size_t i = 0; i < img->nfds; i++) {
    struct tg_rec_fd *r = &img->fds[i].r;
    char path[4097];
    size_t pl = r->extra_len < 4096 ? r->extra_len : 4096;
    memcpy(path, img->fds[i].extra, pl);
    path[pl] = 0;
    if (r->reserved) continue; /* a dup of an earlier fd */
    int fd = -1;
    switch (r->kind) {
    case TG_FD_FILE: case TG_FD_DIR: case TG_FD_CHR: case TG_FD_FIFO: {
      int flags = (int)(r->open_flags & ~(uint32_t)(O_CREAT | O_TRUNC | O_EXCL)) | O_CLOEXEC;
      /* the app's stdout/stderr log (appended): this host's log file, whatever its path was */
      int stdio_log = tg_stdio_log && r->kind == TG_FD_FILE && (r->fd == 1 || r->fd == 2) && (r->open_flags & O_APPEND);
      if (stdio_log) {
        snprintf(path, sizeof path, "%s", tg_stdio_log);
        flags |= O_CREAT;
      }
      if (r->kind == TG_FD_FIFO) flags |= O_NONBLOCK;
      fd = open(path, flags, 0644);
      if (fd < 0) { snprintf(err, errlen, "fd %u: cannot reopen %s: %s", r->fd, path, strerror(errno)); return -1; }
      if (r->kind != TG_FD_CHR && !stdio_log && tg_check_file(path, &r->id, fd, err, errlen) != 0) return -1;
      if (r->kind == TG_FD_FIFO) fcntl(fd, F_SETFL, status_flags(r->open_flags));
      if ((r->kind == TG_FD_FILE || r->kind == TG_FD_DIR) && lseek(fd, (off_t)r->pos, SEEK_SET) < 0) {
        snprintf(err, errlen, "fd %u: cannot seek %s to %llu: %s", r->fd, path, (unsigned long long)r->pos, strerror(errno));
        return -1;
      }
      break;
    }
    case TG_FD_PIPE_R: case TG_FD_PIPE_W: {
      /* create each pipe once, at its first end; give the other end to the matching record */
      int done = 0;
      for (size_t j = 0; j < i; j++) if (img->fds[j].r.aux == r->aux && (img->fds[j].r.kind == TG_FD_PIPE_R || img->fds[j].r.kind == TG_FD_PIPE_W) && !img->fds[j].r.reserved) done = 1;
      if (done) continue;
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) { snprintf(err, errlen, "pipe2: %s", strerror(errno)); return -1; }
      if (r->id.size > 65536) fcntl(p[1], F_SETPIPE_SZ, (int)r->id.size);
      for (size_t k = 0; k < img->npipes; k++) {
        if (img->pipes[k].ino != r->aux) continue;
        size_t w = 0;
        while (w < img->pipes[k].len) {
          ssize_t n = write(p[1], img->pipes[k].data + w, img->pipes[k].len - w);
          if (n <= 0) { snprintf(err, errlen, "refilling pipe:[%llu]: %s", (unsigned long long)r->aux, strerror(errno)); return -1; }
          w += (size_t)n;
        }
      }
      int rh = high(p[0], tmp_base, err, errlen), wh = high(p[1], tmp_base, err, errlen);
      if (rh < 0 || wh < 0) return -1;
      /* hand each end to the first non-dup record of that end */
      int gave_r = 0, gave_w = 0;
      for (size_t j = i; j < img->nfds; j++) {
        struct tg_rec_fd *q = &img->fds[j].r;
        if (q->aux != r->aux || q->reserved) continue;
        if (q->kind == TG_FD_PIPE_R && !gave_r) { tmp[j] = rh; gave_r = 1; fcntl(rh, F_SETFL, status_flags(q->open_flags)); }
        else if (q->kind == TG_FD_PIPE_W && !gave_w) { tmp[j] = wh; gave_w = 1; fcntl(wh, F_SETFL, status_flags(q->open_flags)); }
      }
      if (!gave_r) close(rh);
      if (!gave_w) close(wh);
      continue;
    }
    case TG_FD_EVENTFD:
      fd = eventfd((unsigned)r->aux, EFD_CLOEXEC | ((r->open_flags & O_NONBLOCK) ? EFD_NONBLOCK : 0) | (r->id.reserved ? EFD_SEMAPHORE : 0));
      if (fd < 0) { snprintf(err, errlen, "fd %u: eventfd: %s", r->fd, strerror(errno)); return -1; }
      break;
    case TG_FD_UNIX: /* both ends at once: unix.c */
      if (tg_unix_restore(img, i, tmp, tmp_base, err, errlen) != 0) return -1;
      continue;
    case TG_FD_EPOLL:
      fd = epoll_create1(EPOLL_CLOEXEC);
      if (fd < 0) { snprintf(err, errlen, "fd %u: epoll_create1: %s", r->fd, strerror(errno)); return -1; }
      break;
    default:
      snprintf(err, errlen, "fd %u: unknown kind %u in image", r->fd, r->kind);
      return -1;
    }
    tmp[i] = high(fd, tmp_base, err, errlen);
    if (tmp[i] < 0) return -1;
  }
  /* into place */
  for (size_t i = 0; i < img->nfds; i++) {
    struct tg_rec_fd *r = &img->fds[i].r;
    int src = tmp[i];
    if (r->reserved) src = (int)r->reserved - 1; /* already in place: fds come in ascending order */
    if (src < 0) { snprintf(err, errlen, "fd %u: nothing was created for it", r->fd); return -1; }
    if (dup3(src, (int)r->fd, (r->fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
      snprintf(err, errlen, "fd %u: dup3: %s", r->fd, strerror(errno));
      return -1;
    }
  }
  for (size_t i = 0; i < img->nfds; i++) if (tmp[i] >= 0) close(tmp[i]);
  free(tmp);
  /* epoll interest lists, now that their targets exist */
  for (size_t i = 0; i < img->nfds; i++) {
    struct tg_rec_fd *r = &img->fds[i].r;
    if (r->kind != TG_FD_EPOLL || r->reserved) continue;
    for (size_t k = 0; k + sizeof(struct tg_epoll_entry) <= r->extra_len; k += sizeof(struct tg_epoll_entry)) {
      struct tg_epoll_entry e;
      memcpy(&e, img->fds[i].extra + k, sizeof e);
      struct epoll_event ev = {.events = e.events, .data.u64 = e.data};
      if (epoll_ctl((int)r->fd, EPOLL_CTL_ADD, (int)e.tfd, &ev) != 0) {
        snprintf(err, errlen, "fd %u: epoll_ctl(ADD fd %u): %s", r->fd, e.tfd, strerror(errno));
        return -1;
      }
    }
  }
  return 0;
}
