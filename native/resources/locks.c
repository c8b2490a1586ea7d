/* File locks held through the fds of a regular file or directory (part of the file kind, file.c):
 * flock locks, the POSIX record locks the process owns, and open-file-description (OFD) locks.
 *
 * Capture: /proc/self/fdinfo/N lists, on "lock:" lines, exactly the locks set through that open
 * file description by this process (or owned by the description): kind, type, byte range. A lease
 * or delegation refuses the checkpoint by name. Raw memory only (static table).
 *
 * Restore: once every fd is in place (file.c's settle), each lock is taken again without waiting,
 * by the restored process itself, so a POSIX lock has its owner back. The old processes are gone;
 * a lock another process took meanwhile makes the restore fail, naming the file: running on
 * without the lock the application believes it holds would be silently wrong. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>

#define MAX_LOCKS 4096

static struct tg_lock locks[MAX_LOCKS];
static int nlocks;

void tg_locks_begin(void) { nlocks = 0; }

/* One "lock:\t1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF" line (after "lock:"). */
static int parse(const char *l, struct tg_lock *out, char *word, size_t wcap) {
  char kind[16], adv[16], type[16], end[32];
  unsigned long long start = 0;
  int id, pid;
  unsigned maj, min;
  unsigned long long ino;
  int n = sscanf(l, " %d: %15s %15s %15s %d %x:%x:%llu %llu %31s", &id, kind, adv, type, &pid, &maj, &min, &ino, &start, end);
  snprintf(word, wcap, "%s", n >= 2 ? kind : "?");
  if (n != 10) return -1;
  out->kind = strcmp(kind, "FLOCK") == 0 ? TG_LOCK_FLOCK : strcmp(kind, "POSIX") == 0 ? TG_LOCK_POSIX : strcmp(kind, "OFDLCK") == 0 ? TG_LOCK_OFD : 0;
  out->type = strcmp(type, "WRITE") == 0 ? TG_LOCK_WRITE : strcmp(type, "READ") == 0 ? TG_LOCK_READ : 0;
  if (!out->kind || !out->type || strcmp(adv, "ADVISORY") != 0) return -1;
  out->start = start;
  out->end = strcmp(end, "EOF") == 0 ? UINT64_MAX : strtoull(end, NULL, 10);
  return 0;
}

int tg_locks_note(int fd, const char *fdinfo, const char *path, char *err, size_t errlen) {
  for (const char *l = strstr(fdinfo, "lock:"); l; l = strstr(l + 5, "lock:")) {
    if (l != fdinfo && l[-1] != '\n') continue;
    struct tg_lock k;
    char word[16];
    memset(&k, 0, sizeof k);
    if (parse(l + 5, &k, word, sizeof word) != 0) {
      const char *e = strchr(l, '\n');
      snprintf(err, errlen, "fd %d (%s) holds a lock of a kind a checkpoint cannot take back (%.*s); only flock, POSIX and open-file-description advisory locks are supported: release it before checkpointing",
               fd, path, e ? (int)(e - l) : 80, l);
      return -1;
    }
    if (nlocks == MAX_LOCKS) { snprintf(err, errlen, "more than %d file locks: not supported", MAX_LOCKS); return -1; }
    k.fd = (uint32_t)fd;
    locks[nlocks++] = k;
  }
  return 0;
}

int tg_locks_emit(tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  if (!nlocks) return 0;
  int e = emit(ctx, TG_REC_LOCKS, locks, (size_t)nlocks * sizeof *locks, NULL, 0);
  if (e) snprintf(err, errlen, "recording the file locks: %s", strerror(e));
  return e ? -1 : 0;
}

int tg_locks_apply(const struct tg_fd_restore *rc, uint32_t fd, const char *path, char *err, size_t errlen) {
  for (size_t i = 0; i < rc->nlocks; i++) {
    const struct tg_lock *k = &rc->locks[i];
    if (k->fd != fd) continue;
    int r;
    const char *what = k->kind == TG_LOCK_FLOCK ? "flock" : k->kind == TG_LOCK_POSIX ? "POSIX lock" : "open-file-description lock";
    if (k->kind == TG_LOCK_FLOCK) {
      do r = flock((int)fd, (k->type == TG_LOCK_WRITE ? LOCK_EX : LOCK_SH) | LOCK_NB);
      while (r != 0 && errno == EINTR);
    } else if (k->kind == TG_LOCK_POSIX || k->kind == TG_LOCK_OFD) {
      struct flock fl;
      memset(&fl, 0, sizeof fl);
      fl.l_type = k->type == TG_LOCK_WRITE ? F_WRLCK : F_RDLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = (off_t)k->start;
      fl.l_len = k->end == UINT64_MAX ? 0 : (off_t)(k->end - k->start + 1);
      r = fcntl((int)fd, k->kind == TG_LOCK_POSIX ? F_SETLK : F_OFD_SETLK, &fl);
    } else {
      snprintf(err, errlen, "fd %u: LOCKS record of unknown kind %u", fd, k->kind);
      return -1;
    }
    if (r != 0) {
      snprintf(err, errlen, "fd %u (%s): cannot take back its %s %s lock on bytes %llu-%s: %s%s", fd, path, k->type == TG_LOCK_WRITE ? "write" : "read", what,
               (unsigned long long)k->start, k->end == UINT64_MAX ? "EOF" : "...", strerror(errno),
               errno == EAGAIN || errno == EWOULDBLOCK || errno == EACCES ? " (another process holds a lock on it now: stop it and restore again)" : "");
      return -1;
    }
  }
  return 0;
}
