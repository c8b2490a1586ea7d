/* The agent's walk over the application's fds: common fields of every FD record here, the rest
 * from the resource kind that claims the fd (native/resources/, resource.h). The same walk serves
 * the precheck (is every fd supported? the app may be running) and the capture (records, with
 * every thread parked). Raw syscalls and static memory only. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/sys.h"
#include "../resources/resource.h"
#include "files-deleted.h"

#define MAX_FDS 4096

TG_HIDDEN int tg_describe_fd(int fd, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  char path[64], target[4096];
  static char info[8192];
  memset(rec, 0, sizeof *rec);
  rec->fd = (uint32_t)fd;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  long n = tg_sys4(SYS_readlink, path, target, sizeof target - 1, 0);
  if (n < 0) { snprintf(err, errlen, "fd %d: cannot read its link: %s", fd, strerror((int)-n)); return -1; }
  target[n] = 0;
  struct stat st;
  long r = tg_sys2(SYS_fstat, fd, &st);
  if (r < 0) { snprintf(err, errlen, "fd %d (%s): fstat: %s", fd, target, strerror((int)-r)); return -1; }
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (tg_read_file(path, info, sizeof info) < 0) { snprintf(err, errlen, "fd %d (%s): cannot read fdinfo", fd, target); return -1; }
  const char *p;
  if ((p = tg_res_field(info, "pos:"))) rec->pos = strtoull(p, NULL, 10);
  if ((p = tg_res_field(info, "flags:"))) rec->open_flags = (uint32_t)strtoull(p, NULL, 8);
  long fl = tg_sys2(SYS_fcntl, fd, F_GETFD);
  rec->fd_flags = fl > 0 ? (uint32_t)fl : 0;
  rec->open_flags &= ~(uint32_t)O_CLOEXEC;
  tg_res_file_id(&st, &rec->id);
  struct tg_fd_probe probe = {fd, &st, target, (size_t)n, info, tg_is_hidden_fd};
  int del = tg_files_deleted_describe(&probe, rec, extra, extra_cap, err, errlen, tg_files_on()); /* before the file kind, which refuses deleted files */
  if (del <= 0) return del;
  for (const struct tg_fd_ops *const *k = tg_fd_kinds; *k; k++) {
    int c = (*k)->describe(&probe, rec, extra, extra_cap, err, errlen);
    if (c <= 0) return c;
  }
  const char *what = strncmp(target, "anon_inode:", 11) == 0 ? target + 11 : target;
  snprintf(err, errlen,
           "fd %d (%s, %s) cannot be checkpointed: this kind of file descriptor is not supported yet; "
           "close it in the application or run it without it",
           fd, target, what);
  return -1;
}

/* Walks /proc/self/fd with getdents64. emit NULL: the precheck; else every FD record and the data
 * records of each kind go to emit. fds sharing one open file description (dup) are recorded as
 * dups of the first (reserved = 1 + its fd) and restored as such. */
TG_HIDDEN int tg_walk_fds(tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  int dfd = (int)tg_sys3(SYS_open, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) { snprintf(err, errlen, "cannot list fds: %s", strerror(-dfd)); return -1; }
  char buf[4096];
  static char extra[1 << 16];
  static struct tg_fd_seen seen[MAX_FDS];
  int nseen = 0, rc = 0;
  for (const struct tg_fd_ops *const *k = tg_fd_kinds; *k; k++) if ((*k)->begin) (*k)->begin();
  for (;;) {
    long n = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf);
    if (n < 0) { snprintf(err, errlen, "cannot list fds: %s", strerror((int)-n)); rc = -1; }
    if (n <= 0) break;
    for (long off = 0; off < n && rc == 0;) {
      struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      int fd = atoi(d->name);
      if (fd == dfd || tg_is_hidden_fd(fd)) continue;
      struct tg_rec_fd rec;
      /* the precheck runs while the app runs: an fd it closed since the listing is no refusal,
       * and one closed and opened again at that number is looked at again (the capture's walk,
       * every thread parked, sees the table as it is) */
      int dr = tg_describe_fd(fd, &rec, extra, sizeof extra, err, errlen), gone = 0;
      for (int again = 0; dr != 0 && !emit && !gone && again < 8; again++) {
        gone = tg_sys2(SYS_fcntl, fd, F_GETFD) == -EBADF;
        if (!gone) dr = tg_describe_fd(fd, &rec, extra, sizeof extra, err, errlen);
      }
      if (gone) continue;
      if (dr != 0) { rc = -1; break; }
      if (nseen == MAX_FDS) {
        snprintf(err, errlen, "more than %d open file descriptors: not supported yet (fd %d and more)", MAX_FDS, fd);
        rc = -1;
        break;
      }
      if (emit) {
        for (int i = 0; i < nseen; i++)
          if (seen[i].ino == rec.id.ino && tg_sys5(SYS_kcmp, tg.pid_self, tg.pid_self, 0 /* KCMP_FILE */, seen[i].fd, fd) == 0) {
            rec.reserved = seen[i].fd + 1;
            break;
          }
        int we = emit(ctx, TG_REC_FD, &rec, sizeof rec, extra, rec.extra_len);
        if (we != 0) { snprintf(err, errlen, "writing the image: %s", strerror(we)); rc = -1; break; }
      }
      seen[nseen++] = (struct tg_fd_seen){(uint32_t)fd, rec.kind, rec.aux, rec.id.ino};
    }
    if (rc != 0) break;
  }
  tg_sys1(SYS_close, dfd);
  /* checks across fds (both ends inside), then each kind's data records */
  for (const struct tg_fd_ops *const *k = tg_fd_kinds; rc == 0 && *k; k++)
    if ((*k)->end && (*k)->end(seen, nseen, emit, ctx, err, errlen) != 0) rc = -1;
  return rc;
}

TG_HIDDEN int tg_precheck_fds(char *err, size_t errlen) { return tg_walk_fds(NULL, NULL, err, errlen); }
