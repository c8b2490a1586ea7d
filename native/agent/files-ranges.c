/* Changed ranges of the app's files (issue 14, docs/files.md "Changed ranges"): every write the
 * app makes through a file descriptor the agent saw opened for writing is noted, as a byte range of
 * (device, inode), in a table shared with the daemon: a file `ranges.PID.NONCE` beside the agent
 * socket, mapped shared, so it outlives a process killed between checkpoints. At the cut (every
 * thread parked) the daemon reads the current half of the table, clears the other one and makes
 * it current; it copies only those ranges. Writes the agent cannot see (stdio, inherited fds,
 * fdopen, shared writable mappings, raw syscalls) make the file's range "whole" (from 0 to the
 * end) or leave its fd untracked: the daemon then copies the whole file, as before.
 *
 * Cost per write: a look at the fd's slot and, the first time, one entry (two for the note made
 * before the call and the one after it, coalesced): no lock, no system call, except lseek (write,
 * writev: the offset) and fstat (O_APPEND, once per checkpoint interval). Only with
 * TARDIGRADE_FILES_RANGES set (the daemon sets it unless `run --files none`). */
#include "agent.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "../common/sys.h"

#define RG_MAGIC 0x314e52474152475full /* "_GRAGRN1" */
#define RG_FDS 4096
#define RG_CAP 8192
#define RG_END UINT64_MAX

/* Layout (little endian; the daemon's src/daemon/files-ranges.ts reads it):
 *   0: magic u64, 8: version u32 (1), 12: pid u32 (this process, its namespace), 16: cur u32 (the
 *   half being filled), 20: pad, 24: gen u64 (bumped by the daemon at each cut), 32: count[2] u32,
 *   40: overflow[2] u32; 4096: fds[RG_FDS] {dev, ino} (ino 0: fd not tracked);
 *   4096 + RG_FDS*16: entries[2][RG_CAP] {dev, ino, start, end} (ino 0: not written yet; end
 *   RG_END: to the end of the file). */
struct rg_head {
  uint64_t magic;
  uint32_t version, pid;
  uint32_t cur, pad;
  uint64_t gen;
  uint32_t count[2];
  uint32_t overflow[2];
};
struct rg_fd { uint64_t dev, ino; };
struct rg_entry { uint64_t dev, ino, start, end; };
struct rg_table {
  struct rg_head h;
  char pad[4096 - sizeof(struct rg_head)];
  struct rg_fd fds[RG_FDS];
  struct rg_entry e[2][RG_CAP];
};

static struct rg_table *rg;
/* private per fd: opened with O_APPEND; the gen at which [size, end) was noted */
static struct { uint8_t append; uint64_t gen; } fdp[RG_FDS];
static __thread __attribute__((tls_model("initial-exec"))) struct { int idx; uint32_t half; uint64_t gen; } last = {-1, 0, 0};

static void note_file(uint64_t dev, uint64_t ino, uint64_t start, uint64_t end) {
  struct rg_table *t = rg;
  if (!t || !ino || end <= start) return;
  uint32_t h = __atomic_load_n(&t->h.cur, __ATOMIC_ACQUIRE) & 1;
  uint64_t gen = __atomic_load_n(&t->h.gen, __ATOMIC_ACQUIRE);
  if (last.idx >= 0 && last.gen == gen && last.half == h) {
    struct rg_entry *e = &t->e[h][last.idx];
    if (__atomic_load_n(&e->ino, __ATOMIC_ACQUIRE) == ino && e->dev == dev && start >= e->start && start <= e->end) {
      uint64_t cur = __atomic_load_n(&e->end, __ATOMIC_RELAXED);
      while (end > cur && !__atomic_compare_exchange_n(&e->end, &cur, end, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {}
      return;
    }
  }
  uint32_t i = __atomic_fetch_add(&t->h.count[h], 1, __ATOMIC_ACQ_REL);
  if (i >= RG_CAP) {
    __atomic_store_n(&t->h.overflow[h], 1, __ATOMIC_RELEASE);
    return;
  }
  struct rg_entry *e = &t->e[h][i];
  e->dev = dev;
  e->start = start;
  e->end = end;
  __atomic_store_n(&e->ino, ino, __ATOMIC_RELEASE);
  last.idx = (int)i;
  last.half = h;
  last.gen = gen;
}

static inline int tracked(int fd) { return rg && fd >= 0 && fd < RG_FDS && __atomic_load_n(&rg->fds[fd].ino, __ATOMIC_RELAXED) != 0; }

static void note_fd(int fd, uint64_t start, uint64_t end) {
  if (!tracked(fd)) return;
  note_file(rg->fds[fd].dev, rg->fds[fd].ino, start, end);
}

static void untrack(int fd) {
  if (rg && fd >= 0 && fd < RG_FDS) __atomic_store_n(&rg->fds[fd].ino, 0, __ATOMIC_RELEASE);
}

/* The fd's file becomes wholly changed and stays untracked (its writes go where the agent does not see). */
static void opaque_fd(int fd) {
  if (!rg || fd < 0) return;
  struct stat st;
  if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) note_file(st.st_dev, st.st_ino, 0, RG_END);
  untrack(fd);
}

/* An open that the agent saw: a regular file opened for writing is tracked from now on. */
TG_HIDDEN void tg_ranges_opened(int fd, int flags, const struct stat *st) {
  if (!rg || fd < 0) return;
  if (fd >= RG_FDS) { note_file(st->st_dev, st->st_ino, 0, RG_END); return; } /* untracked: whole */
  fdp[fd].append = (flags & O_APPEND) != 0;
  fdp[fd].gen = UINT64_MAX;
  rg->fds[fd].dev = st->st_dev;
  __atomic_store_n(&rg->fds[fd].ino, st->st_ino, __ATOMIC_RELEASE);
  if (flags & O_TRUNC) note_file(st->st_dev, st->st_ino, 0, RG_END);
}

/* A file opened for writing where the agent cannot follow its writes (fopen: stdio writes inside libc). */
TG_HIDDEN void tg_ranges_whole(int fd) { opaque_fd(fd); }

/* The range a write of len bytes at the fd's offset (off < 0) or at off touches. */
static void note_write(int fd, long long off, uint64_t len, int append) {
  if (!tracked(fd) || !len) return;
  if (append || (fd < RG_FDS && fdp[fd].append)) {
    uint64_t gen = __atomic_load_n(&rg->h.gen, __ATOMIC_ACQUIRE);
    if (fdp[fd].gen == gen) return;
    struct stat st;
    if (tg_sys2(SYS_fstat, fd, &st) != 0) { note_fd(fd, 0, RG_END); return; }
    note_fd(fd, (uint64_t)st.st_size, RG_END);
    fdp[fd].gen = gen;
    return;
  }
  if (off < 0) {
    off = tg_sys3(SYS_lseek, fd, 0, SEEK_CUR);
    if (off < 0) { note_fd(fd, 0, RG_END); return; }
  }
  note_fd(fd, (uint64_t)off, (uint64_t)off + len);
}

static uint64_t iov_len(const struct iovec *iov, int n) {
  uint64_t s = 0;
  for (int i = 0; iov && i < n; i++) s += iov[i].iov_len;
  return s;
}

#define REAL(name, type, fail) \
  static type real_##name; \
  if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name); \
  if (!real_##name) { errno = ENOSYS; return fail; }
#define EXPORT __attribute__((visibility("default")))

/* Every write is noted before the call (a write in flight at the cut is in the cut's ranges) and
 * after it (a write that lands after the cut is in the next one); the second note costs nothing
 * when the first covers it in the same interval. */
typedef ssize_t (*write_fn)(int, const void *, size_t);
EXPORT ssize_t write(int fd, const void *b, size_t n) {
  REAL(write, write_fn, -1)
  if (!tracked(fd)) return real_write(fd, b, n);
  long long off = fdp[fd].append ? -1 : tg_sys3(SYS_lseek, fd, 0, SEEK_CUR);
  note_write(fd, off, n, 0);
  ssize_t r = real_write(fd, b, n);
  if (r > 0) { int e = errno; note_write(fd, off, (uint64_t)r, 0); errno = e; }
  return r;
}

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
#define PWRITE_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const void *b, size_t n, off_t off) { \
    REAL(name, pwrite_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, b, n, off); \
    note_write(fd, off, n, 0); \
    ssize_t r = real_##name(fd, b, n, off); \
    if (r > 0) { int e = errno; note_write(fd, off, (uint64_t)r, 0); errno = e; } \
    return r; \
  }
PWRITE_WRAPPER(pwrite)
PWRITE_WRAPPER(pwrite64)

typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  REAL(writev, writev_fn, -1)
  if (!tracked(fd)) return real_writev(fd, iov, cnt);
  long long off = fdp[fd].append ? -1 : tg_sys3(SYS_lseek, fd, 0, SEEK_CUR);
  note_write(fd, off, iov_len(iov, cnt), 0);
  ssize_t r = real_writev(fd, iov, cnt);
  if (r > 0) { int e = errno; note_write(fd, off, (uint64_t)r, 0); errno = e; }
  return r;
}

typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
#define PWRITEV_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off) { \
    REAL(name, pwritev_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, iov, cnt, off); \
    note_write(fd, off, iov_len(iov, cnt), 0); \
    ssize_t r = real_##name(fd, iov, cnt, off); \
    if (r > 0) { int e = errno; note_write(fd, off, (uint64_t)r, 0); errno = e; } \
    return r; \
  }
PWRITEV_WRAPPER(pwritev)
PWRITEV_WRAPPER(pwritev64)

typedef ssize_t (*pwritev2_fn)(int, const struct iovec *, int, off_t, int);
#define PWRITEV2_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off, int fl) { \
    REAL(name, pwritev2_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, iov, cnt, off, fl); \
    int app = (fl & RWF_APPEND) != 0; \
    long long o = off == -1 && !app && !fdp[fd].append ? tg_sys3(SYS_lseek, fd, 0, SEEK_CUR) : off; \
    note_write(fd, o, iov_len(iov, cnt), app); \
    ssize_t r = real_##name(fd, iov, cnt, off, fl); \
    if (r > 0) { int e = errno; note_write(fd, o, (uint64_t)r, app); errno = e; } \
    return r; \
  }
PWRITEV2_WRAPPER(pwritev2)
PWRITEV2_WRAPPER(pwritev64v2)

/* Size changes: from the smaller of the old and the new size to the end. */
typedef int (*ftruncate_fn)(int, off_t);
#define FTRUNCATE_WRAPPER(name) \
  EXPORT int name(int fd, off_t len) { \
    REAL(name, ftruncate_fn, -1) \
    if (tracked(fd)) { \
      struct stat st; \
      uint64_t from = tg_sys2(SYS_fstat, fd, &st) == 0 && (uint64_t)st.st_size < (uint64_t)len ? (uint64_t)st.st_size : (uint64_t)len; \
      note_fd(fd, from, RG_END); \
    } \
    return real_##name(fd, len); \
  }
FTRUNCATE_WRAPPER(ftruncate)
FTRUNCATE_WRAPPER(ftruncate64)

/* Allocation past the end: the new bytes (zeros) from the old end. */
static void note_grow(int fd, uint64_t off, uint64_t len) {
  struct stat st;
  if (tg_sys2(SYS_fstat, fd, &st) != 0) { note_fd(fd, off, off + len); return; }
  uint64_t from = (uint64_t)st.st_size > off ? (uint64_t)st.st_size : off;
  if (off + len > from) note_fd(fd, from, off + len);
}

typedef int (*fallocate_fn)(int, int, off_t, off_t);
#define FALLOCATE_WRAPPER(name) \
  EXPORT int name(int fd, int mode, off_t off, off_t len) { \
    REAL(name, fallocate_fn, -1) \
    if (tracked(fd)) { \
      if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) note_fd(fd, (uint64_t)off, RG_END); /* bytes move up to the end */ \
      else if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) note_fd(fd, (uint64_t)off, (uint64_t)off + (uint64_t)len); \
      else if (!(mode & FALLOC_FL_KEEP_SIZE)) note_grow(fd, (uint64_t)off, (uint64_t)len); \
    } \
    return real_##name(fd, mode, off, len); \
  }
FALLOCATE_WRAPPER(fallocate)
FALLOCATE_WRAPPER(fallocate64)

typedef int (*pfallocate_fn)(int, off_t, off_t);
#define PFALLOCATE_WRAPPER(name) \
  EXPORT int name(int fd, off_t off, off_t len) { \
    REAL(name, pfallocate_fn, ENOSYS) \
    if (tracked(fd)) note_grow(fd, (uint64_t)off, (uint64_t)len); \
    return real_##name(fd, off, len); \
  }
PFALLOCATE_WRAPPER(posix_fallocate)
PFALLOCATE_WRAPPER(posix_fallocate64)

typedef ssize_t (*cfr_fn)(int, off_t *, int, off_t *, size_t, unsigned);
EXPORT ssize_t copy_file_range(int in, off_t *inoff, int out, off_t *outoff, size_t n, unsigned fl) {
  REAL(copy_file_range, cfr_fn, -1)
  if (!tracked(out)) return real_copy_file_range(in, inoff, out, outoff, n, fl);
  long long o = outoff ? *outoff : (fdp[out].append ? -1 : tg_sys3(SYS_lseek, out, 0, SEEK_CUR));
  note_write(out, o, n, 0);
  ssize_t r = real_copy_file_range(in, inoff, out, outoff, n, fl);
  if (r > 0) { int e = errno; note_write(out, o, (uint64_t)r, 0); errno = e; }
  return r;
}

typedef ssize_t (*sendfile_fn)(int, int, off_t *, size_t);
#define SENDFILE_WRAPPER(name) \
  EXPORT ssize_t name(int out, int in, off_t *inoff, size_t n) { \
    REAL(name, sendfile_fn, -1) \
    if (!tracked(out)) return real_##name(out, in, inoff, n); \
    long long o = fdp[out].append ? -1 : tg_sys3(SYS_lseek, out, 0, SEEK_CUR); \
    note_write(out, o, n, 0); \
    ssize_t r = real_##name(out, in, inoff, n); \
    if (r > 0) { int e = errno; note_write(out, o, (uint64_t)r, 0); errno = e; } \
    return r; \
  }
SENDFILE_WRAPPER(sendfile)
SENDFILE_WRAPPER(sendfile64)

typedef ssize_t (*splice_fn)(int, loff_t *, int, loff_t *, size_t, unsigned);
EXPORT ssize_t splice(int in, loff_t *inoff, int out, loff_t *outoff, size_t n, unsigned fl) {
  REAL(splice, splice_fn, -1)
  if (!tracked(out)) return real_splice(in, inoff, out, outoff, n, fl);
  long long o = outoff ? *outoff : (fdp[out].append ? -1 : tg_sys3(SYS_lseek, out, 0, SEEK_CUR));
  note_write(out, o, n, 0);
  ssize_t r = real_splice(in, inoff, out, outoff, n, fl);
  if (r > 0) { int e = errno; note_write(out, o, (uint64_t)r, 0); errno = e; }
  return r;
}

/* A shared writable mapping: its writes are not seen; the file is wholly changed while it may be mapped. */
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
#define MMAP_WRAPPER(name) \
  EXPORT void *name(void *a, size_t n, int prot, int fl, int fd, off_t off) { \
    REAL(name, mmap_fn, MAP_FAILED) \
    if (fd >= 0 && (prot & PROT_WRITE) && (fl & MAP_TYPE) == MAP_SHARED && rg) { \
      int e = errno; \
      struct stat st; \
      if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) note_file(st.st_dev, st.st_ino, 0, RG_END); \
      errno = e; \
    } \
    return real_##name(a, n, prot, fl, fd, off); \
  }
MMAP_WRAPPER(mmap)
MMAP_WRAPPER(mmap64)

typedef int (*close_fn)(int);
EXPORT int close(int fd) {
  REAL(close, close_fn, -1)
  untrack(fd);
  return real_close(fd);
}

static void copy_fd(int from, int to) {
  if (!rg || to < 0) return;
  if (to >= RG_FDS) { if (tracked(from)) opaque_fd(from); return; }
  if (!tracked(from)) { untrack(to); return; }
  fdp[to] = fdp[from];
  rg->fds[to].dev = rg->fds[from].dev;
  __atomic_store_n(&rg->fds[to].ino, rg->fds[from].ino, __ATOMIC_RELEASE);
}

typedef int (*dup_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
EXPORT int dup(int fd) {
  REAL(dup, dup_fn, -1)
  int r = real_dup(fd);
  if (r >= 0) copy_fd(fd, r);
  return r;
}
EXPORT int dup2(int fd, int to) {
  REAL(dup2, dup2_fn, -1)
  int r = real_dup2(fd, to);
  if (r >= 0 && fd != to) copy_fd(fd, r);
  return r;
}
EXPORT int dup3(int fd, int to, int fl) {
  REAL(dup3, dup3_fn, -1)
  int r = real_dup3(fd, to, fl);
  if (r >= 0) copy_fd(fd, r);
  return r;
}

typedef int (*fcntl_fn)(int, int, ...);
#define FCNTL_WRAPPER(name) \
  EXPORT int name(int fd, int cmd, ...) { \
    va_list ap; \
    va_start(ap, cmd); \
    long arg = va_arg(ap, long); /* every fcntl argument is an int, a long or a pointer */ \
    va_end(ap); \
    REAL(name, fcntl_fn, -1) \
    int r = real_##name(fd, cmd, arg); \
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) copy_fd(fd, r); \
    if (r >= 0 && cmd == F_SETFL && tracked(fd)) fdp[fd].append = (arg & O_APPEND) != 0; \
    return r; \
  }
FCNTL_WRAPPER(fcntl)
FCNTL_WRAPPER(fcntl64)

/* stdio on an fd: its writes happen inside libc */
typedef FILE *(*fdopen_fn)(int, const char *);
EXPORT FILE *fdopen(int fd, const char *mode) {
  REAL(fdopen, fdopen_fn, NULL)
  if (tracked(fd)) { int e = errno; opaque_fd(fd); errno = e; }
  return real_fdopen(fd, mode);
}

/* ---- the table ---- */

static struct rg_table *new_table(void) {
  size_t dl;
  const char *slash = strrchr(tg.sock_base, '/');
  if (!slash) return NULL;
  dl = (size_t)(slash - tg.sock_base);
  char p[sizeof tg.sock_base + 64];
  uint64_t nonce = 0;
  if (tg_sys3(SYS_getrandom, &nonce, sizeof nonce, 0) != (long)sizeof nonce) nonce = tg_now_ns(CLOCK_MONOTONIC);
  memcpy(p, tg.sock_base, dl);
  snprintf(p + dl, sizeof p - dl, "/ranges.%d.%016llx", (int)tg_sys0(SYS_getpid), (unsigned long long)nonce);
  long fd = tg_sys4(SYS_openat, AT_FDCWD, p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return NULL;
  void *m = MAP_FAILED;
  if (tg_sys2(SYS_ftruncate, fd, sizeof(struct rg_table)) == 0)
    m = (void *)tg_sys6l(SYS_mmap, 0, sizeof(struct rg_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  tg_sys1(SYS_close, fd);
  if ((unsigned long)m > -4096UL) { tg_sys1(SYS_unlink, p); return NULL; }
  struct rg_table *t = m;
  t->h.version = 1;
  t->h.pid = (uint32_t)tg_sys0(SYS_getpid);
  __atomic_store_n(&t->h.magic, RG_MAGIC, __ATOMIC_RELEASE);
  return t;
}

/* Files this program got open for writing from before (exec, inheritance): their history is unknown. */
static void inherited_fds(void) {
  for (int fd = 0; fd < 1024; fd++) {
    if (tg_is_hidden_fd(fd)) continue;
    long fl = tg_sys2(SYS_fcntl, fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) continue;
    struct stat st;
    if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) note_file(st.st_dev, st.st_ino, 0, RG_END);
  }
}

TG_HIDDEN void tg_ranges_init(void) {
  const char *on = getenv("TARDIGRADE_FILES_RANGES");
  if (!on || strcmp(on, "1") != 0 || !tg.active) return;
  rg = new_table();
  if (rg) inherited_fds();
}

/* In a forked child: a table of its own, with the fds it inherited. */
TG_HIDDEN void tg_ranges_after_fork(void) {
  struct rg_table *old = rg;
  last.idx = -1;
  if (!old) return;
  rg = NULL;
  struct rg_table *t = new_table();
  if (t) memcpy(t->fds, old->fds, sizeof t->fds);
  tg_sys2(SYS_munmap, old, sizeof(struct rg_table));
  rg = t;
}
