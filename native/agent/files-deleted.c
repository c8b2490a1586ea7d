/* Deleted-but-open regular files (FD kind 20, issue 14, docs/files.md "Deleted-but-open files").
 * A file the app unlinked but still holds open has no name to reopen. Its contents are part of the
 * app's files image: the daemon reads them at the cut through /proc/PID/fd/N and records them under
 * a staging name beside the old one, `DIR/.tardigrade-deleted.INO.PID.FD` (the rollback writes that
 * file back before the restorer runs). The restorer opens the staging name, removes it and seeks:
 * the process gets the checkpoint's contents, its offset, and no name. Compiled into the agent
 * (capture, with the resources' rules: raw syscalls, static memory) and the restorer (restore).
 *
 * The FD record's extra: the staging path, a NUL, the path the file had (for messages). The fd
 * walks ask this kind before the table of native/resources/ (agent/fds.c, restore/fds.c,
 * restore/tree-fds.c), where the plain file kind refuses deleted files. */
#include "../resources/resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/sys.h"
#include "files-deleted.h"

#define DELETED_SUFFIX " (deleted)"

/* The staging name of a deleted file: the daemon makes the same one (src/daemon/files-deleted.ts). */
static int staging_path(char *out, size_t cap, const char *path, size_t pl, uint64_t ino, long pid, int fd) {
  size_t d = pl;
  while (d > 0 && path[d - 1] != '/') d--;
  int n = snprintf(out, cap, "%.*s.tardigrade-deleted.%llu.%ld.%d", (int)d, path, (unsigned long long)ino, pid, fd);
  return n > 0 && (size_t)n < cap ? n : -1;
}

/* 1: not a deleted regular file; 0: recorded as kind 20; -1: refused (files_on 0: `run --files none`). */
TG_RES_HIDDEN int tg_files_deleted_describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                                            size_t errlen, int files_on) {
  size_t tl = p->target_len, sl = sizeof DELETED_SUFFIX - 1;
  if (!S_ISREG(p->st->st_mode) || p->target[0] != '/' || tl <= sl || strcmp(p->target + tl - sl, DELETED_SUFFIX) != 0) return 1;
  if (p->st->st_nlink != 0) return 1; /* still linked under another name: the file kind refuses it by name */
  /* a file of the filesystem its path names: not a memfd ("/memfd:NAME (deleted)"), a POSIX message
   * queue or other shmem object whose path is relative to an internal mount, which a staging file
   * beside "/NAME" would turn into a different thing (the table refuses those by name) */
  {
    char dir[4097];
    size_t d = tl - sl;
    while (d > 0 && p->target[d - 1] != '/') d--;
    if (d == 0 || d >= sizeof dir) return 1;
    memcpy(dir, p->target, d);
    dir[d] = 0;
    struct stat ds;
    if (tg_sys4(SYS_newfstatat, AT_FDCWD, dir, &ds, 0) != 0) {
      snprintf(err, errlen, "fd %d: file %s has been deleted and its directory %s is gone too: it cannot be given back", p->fd, p->target, dir);
      return -1;
    }
    if (ds.st_dev != p->st->st_dev) return 1;
  }
  if (!files_on) {
    snprintf(err, errlen,
             "fd %d: file %s has been deleted; deleted open files are kept only with the app's files (the app was run with --files none)",
             p->fd, p->target);
    return -1;
  }
  size_t ol = tl - sl;
  char staged[4200];
  int n = staging_path(staged, sizeof staged, p->target, ol, (uint64_t)p->st->st_ino, tg_sys0(SYS_getpid), p->fd);
  if (n < 0 || (size_t)n + 1 + ol > extra_cap) { snprintf(err, errlen, "fd %d (%s): path too long", p->fd, p->target); return -1; }
  rec->kind = TG_FD_FILE_DELETED;
  memcpy(extra, staged, (size_t)n);
  extra[n] = 0;
  memcpy(extra + n + 1, p->target, ol);
  rec->extra_len = (uint32_t)((size_t)n + 1 + ol);
  return 0;
}

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  return tg_files_deleted_describe(p, rec, extra, extra_cap, err, errlen, 1);
}

static int owns(uint32_t k) { return k == TG_FD_FILE_DELETED; }

TG_RES_HIDDEN int (*tg_deleted_shared_fd)(const struct tg_file_id *id) = NULL;

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  char staged[4097];
  size_t sl = strnlen(rc->fds[i].extra, r->extra_len);
  if (sl == 0 || sl >= sizeof staged) { snprintf(err, errlen, "fd %u: deleted file record without a staging path", r->fd); return -1; }
  memcpy(staged, rc->fds[i].extra, sl);
  staged[sl] = 0;
  const char *was = sl + 1 < r->extra_len ? rc->fds[i].extra + sl + 1 : staged;
  int was_len = sl + 1 < r->extra_len ? (int)(r->extra_len - sl - 1) : (int)sl;
  int flags = (int)(r->open_flags & ~(uint32_t)(O_CREAT | O_TRUNC | O_EXCL)) | O_CLOEXEC | O_NOFOLLOW;
  /* the same file mapped shared: the restored mapping's object (the staging file itself, opened
   * and its name removed by restore.c), so fd and mapping stay one file, as they were */
  int shm = tg_deleted_shared_fd ? tg_deleted_shared_fd(&r->id) : -1;
  int fd;
  if (shm >= 0) {
    char self[40];
    snprintf(self, sizeof self, "/proc/self/fd/%d", shm);
    fd = open(self, flags & ~O_NOFOLLOW);
  } else
    fd = open(staged, flags);
  if (fd < 0) {
    snprintf(err, errlen,
             "fd %u: deleted file %.*s: cannot open its contents at %s: %s (the files rollback writes them there; "
             "restore the checkpoint through the daemon)",
             r->fd, was_len, was, staged, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "fd %u: %s is not a regular file", r->fd, staged);
    close(fd);
    return -1;
  }
  /* (the shared object is that file, its name already removed: restore.c) */
  if (shm < 0 && unlink(staged) != 0) {
    snprintf(err, errlen, "fd %u: cannot remove %s (the deleted file's staging name): %s", r->fd, staged, strerror(errno));
    close(fd);
    return -1;
  }
  if (lseek(fd, (off_t)r->pos, SEEK_SET) < 0) {
    snprintf(err, errlen, "fd %u: cannot seek deleted file %.*s to %llu: %s", r->fd, was_len, was, (unsigned long long)r->pos, strerror(errno));
    close(fd);
    return -1;
  }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_file_deleted = {.name = "deleted file", .describe = describe, .owns = owns, .open = open_one};
