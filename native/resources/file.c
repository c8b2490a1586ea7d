/* Paths that can be reopened: regular files, directories, character devices and named FIFOs
 * (FD kinds 1, 2, 3, 6). Captured as path, flags, offset and identity (device, inode, size,
 * mtime); restored by opening the path again, checking it is the same file, and seeking. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* A path under /proc/<pid>/: "/proc/self/REST" in out when pid is this process (its pid as the
 * /proc mount shows it), out[0] = 0 when the path is not such a path; -1: another process's or a
 * thread's (/proc/<pid>/task/..., /proc/<tid>/...). */
static int proc_of_self(const char *target, char *out, size_t cap) {
  out[0] = 0;
  if (strncmp(target, "/proc/", 6) != 0 || target[6] < '0' || target[6] > '9') return 0;
  char *end = NULL;
  unsigned long n = strtoul(target + 6, &end, 10);
  if (!end || (*end != '/' && *end != 0)) return 0;
  char self[32] = {0};
  ssize_t l = readlink("/proc/self", self, sizeof self - 1);
  if (l <= 0 || strtoul(self, NULL, 10) != n || strncmp(end, "/task/", 6) == 0) return -1;
  if ((size_t)snprintf(out, cap, "/proc/self%s", end) >= cap) return -1;
  return 0;
}

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  mode_t m = p->st->st_mode;
  if (!(S_ISREG(m) || S_ISDIR(m) || S_ISCHR(m) || (S_ISFIFO(m) && p->target[0] == '/'))) return 1;
  size_t tl = p->target_len;
  if (strncmp(p->target, "/memfd:", 7) == 0) {
    snprintf(err, errlen, "fd %d (memfd %s) cannot be checkpointed: a memfd held as an fd is not supported yet (one the process maps is: its memory is captured)", p->fd, p->target);
    return -1;
  }
  if (tl > 10 && strcmp(p->target + tl - 10, " (deleted)") == 0) {
    snprintf(err, errlen, "fd %d: file %s has been deleted; deleted open files are not supported yet", p->fd, p->target);
    return -1;
  }
  if (p->target[0] != '/') { snprintf(err, errlen, "fd %d (%s): not a path that can be reopened", p->fd, p->target); return -1; }
  char own[64];
  if (proc_of_self(p->target, own, sizeof own) != 0) {
    snprintf(err, errlen, "fd %d: %s is a /proc file of another process or thread: not supported yet (its pid is not the same after a restore)", p->fd, p->target);
    return -1;
  }
  if (own[0]) { /* /proc/<this pid>/...: reopened as /proc/self/... (the pid the host sees changes) */
    size_t ol = strlen(own);
    if (ol > extra_cap) { snprintf(err, errlen, "fd %d: path too long", p->fd); return -1; }
    rec->kind = TG_FD_FILE;
    memcpy(extra, own, ol);
    rec->extra_len = (uint32_t)ol;
    return 0;
  }
  if (S_ISREG(m)) rec->kind = TG_FD_FILE;
  else if (S_ISDIR(m)) rec->kind = TG_FD_DIR;
  else if (S_ISCHR(m)) {
    rec->kind = TG_FD_CHR;
    rec->aux = p->st->st_rdev;
    /* /dev/pts/N and /dev/ttyN belong to a terminal that does not survive a restore */
    unsigned maj = major(p->st->st_rdev);
    if (maj == 136 || maj == 4 || maj == 5) {
      snprintf(err, errlen, "fd %d: terminal %s is not supported (run the app with its stdio redirected; tardigrade run does that)", p->fd, p->target);
      return -1;
    }
  } else rec->kind = TG_FD_FIFO;
  if (tl > extra_cap) { snprintf(err, errlen, "fd %d: path too long", p->fd); return -1; }
  memcpy(extra, p->target, tl);
  rec->extra_len = (uint32_t)tl;
  /* the locks held through it (locks.c; a dup lists them again: taken back at the first fd, the
   * one the restore opens) */
  if ((S_ISREG(m) || S_ISDIR(m)) && tg_locks_note(p->fd, p->fdinfo, p->target, err, errlen) != 0) return -1;
  return 0;
}

static void begin(void) { tg_locks_begin(); }

static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen;
  return emit ? tg_locks_emit(emit, ctx, err, errlen) : 0;
}
TG_RES_HIDDEN int tg_files_rolled_back;

int tg_check_file(const char *path, const struct tg_file_id *id, int fd, char *err, size_t errlen) {
  struct stat st;
  if (fstat(fd, &st) != 0) { snprintf(err, errlen, "%s: fstat: %s", path, strerror(errno)); return -1; }
  if (tg_files_rolled_back && S_ISREG(st.st_mode) && S_ISREG(id->mode)) return 0;
  if (st.st_dev != id->dev || st.st_ino != id->ino) {
    snprintf(err, errlen, "%s is not the file the application had open at the checkpoint (it was replaced: inode %llu, was %llu)",
             path, (unsigned long long)st.st_ino, (unsigned long long)id->ino);
    return -1;
  }
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_FILE || k == TG_FD_DIR || k == TG_FD_CHR || k == TG_FD_FIFO; }

/* Was `recorded` (an fd's path at the checkpoint) an app's stdout/stderr log? `log` itself, or
 * any tardigrade home's "/apps/NAME/log" (another host's, or another app's for an imported
 * image); an appended file of the app's own at fd 1 or 2 (nginx puts its error log there) is not. */
static int is_app_log(const char *recorded, const char *log) {
  if (strcmp(recorded, log) == 0) return 1;
  size_t rl = strlen(recorded);
  if (rl < 10 || strcmp(recorded + rl - 4, "/log") != 0) return 0;
  const char *name_end = recorded + rl - 4, *p = name_end;
  while (p > recorded && p[-1] != '/') p--;
  return p < name_end && p - recorded >= 6 && strncmp(p - 6, "/apps/", 6) == 0;
}

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  char path[4097];
  size_t pl = r->extra_len < 4096 ? r->extra_len : 4096;
  memcpy(path, rc->fds[i].extra, pl);
  path[pl] = 0;
  int flags = (int)(r->open_flags & ~(uint32_t)(O_CREAT | O_TRUNC | O_EXCL)) | O_CLOEXEC;
  /* the app's stdout/stderr log (appended): this host's log file, whatever its path was */
  int stdio_log = rc->stdio_log && r->kind == TG_FD_FILE && (r->fd == 1 || r->fd == 2) && (r->open_flags & O_APPEND) && is_app_log(path, rc->stdio_log);
  if (stdio_log) {
    snprintf(path, sizeof path, "%s", rc->stdio_log);
    flags |= O_CREAT;
  }
  if (r->kind == TG_FD_FIFO) flags |= O_NONBLOCK;
  int fd = open(path, flags, 0644);
  if (fd < 0) { snprintf(err, errlen, "fd %u: cannot reopen %s: %s", r->fd, path, strerror(errno)); return -1; }
  /* (a /proc/self file is this process's own: a new inode of procfs) */
  int own_proc = strncmp(path, "/proc/self/", 11) == 0;
  if (r->kind != TG_FD_CHR && !stdio_log && !own_proc && tg_check_file(path, &r->id, fd, err, errlen) != 0) { close(fd); return -1; }
  if (r->kind == TG_FD_FIFO && fcntl(fd, F_SETFL, tg_res_status_flags(r->open_flags)) != 0) {
    snprintf(err, errlen, "fd %u: fcntl(F_SETFL) on %s: %s", r->fd, path, strerror(errno));
    close(fd);
    return -1;
  }
  if ((r->kind == TG_FD_FILE || r->kind == TG_FD_DIR) && lseek(fd, (off_t)r->pos, SEEK_SET) < 0) {
    snprintf(err, errlen, "fd %u: cannot seek %s to %llu: %s", r->fd, path, (unsigned long long)r->pos, strerror(errno));
    close(fd);
    return -1;
  }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

/* once every fd is in place: the locks held through it (a POSIX lock by its owner, this process) */
static int settle(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  if (r->kind != TG_FD_FILE && r->kind != TG_FD_DIR) return 0;
  char path[4097];
  size_t pl = r->extra_len < 4096 ? r->extra_len : 4096;
  memcpy(path, rc->fds[i].extra, pl);
  path[pl] = 0;
  return tg_locks_apply(rc, r->fd, path, err, errlen);
}

const struct tg_fd_ops tg_fd_file = {.name = "file", .describe = describe, .begin = begin, .end = end, .owns = owns, .open = open_one, .settle = settle};
