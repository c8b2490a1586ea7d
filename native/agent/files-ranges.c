/* Changed ranges of the app's files (issue 14, docs/files.md "Changed ranges"): every write the
 * app makes through a file descriptor the agent saw opened for writing is noted, as a byte range of
 * (device, inode), in a table shared with the daemon: a file `ranges.PID.NONCE` beside the agent
 * socket, mapped shared, so it outlives a process killed between checkpoints. At the cut (every
 * thread parked) the daemon makes the other (cleared) half current; after the app resumed it reads
 * the half it flipped away and clears it; it reads only those ranges. Writes the agent cannot see (stdio, inherited fds,
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
  uint32_t busy_unslotted; /* 48: writes in flight without a slot */
  uint32_t pad2;
};
/* 512: a write in flight (busy 2: filled); the daemon reads its range of pages while the app is held */
#define RG_SLOTS 64
struct rg_slot { uint64_t busy, dev, ino, start, end; };
struct rg_fd { uint64_t dev, ino; };
struct rg_entry { uint64_t dev, ino, start, end; };
struct rg_table {
  struct rg_head h;
  char pad[512 - sizeof(struct rg_head)];
  struct rg_slot slots[RG_SLOTS];
  char pad1[4096 - 512 - RG_SLOTS * sizeof(struct rg_slot)];
  struct rg_fd fds[RG_FDS];
  struct rg_entry e[2][RG_CAP];
};

/* Copy-before-write (docs/files.md): `files.cow`, one per app, mapped shared by every process. At
 * the cut, with the app held, the daemon bumps gen and sets active to 2 ("every page"): until it
 * says otherwise, a write about to change a page of a tracked file first appends the page's bytes
 * to `files.cow-log` (a record: gen, dev, ino, offset, length, then the bytes), pages past the
 * file's end excepted. A change of more than COW_WAIT bytes (a truncation, O_TRUNC, a shared
 * writable mapping, a big write) waits instead until the daemon has published the pages it reads
 * (sorted by dev, ino, start; page-aligned, disjoint) and set active to 1 ("the set"): from then on
 * only the pages of the set are saved. The daemon takes the first record of each page over what it
 * reads from the file. Mode 2 ends at `deadline` (CLOCK_MONOTONIC ns): an agent past it stops
 * saving and sets lost (the checkpoint then fails), so a daemon killed in that window costs the app
 * at most that long; so does a log grown past COW_LOG_CAP. */
#define COW_MAGIC 0x315745434741475full
#define COW_CAP 16384
#define COW_WAIT (1u << 20)
#define COW_LOG_CAP (256ull << 20)
struct cow_head { uint64_t magic, gen; uint32_t active, count, lost, pad; uint64_t deadline; };
struct cow_table {
  struct cow_head h;
  char pad[64 - sizeof(struct cow_head)];
  struct rg_entry e[COW_CAP];
};
struct cow_rec { uint64_t gen, dev, ino, off, len; };
static struct cow_table *cow;
static void cow_before(int wfd, const char *path, uint64_t dev, uint64_t ino, uint64_t s, uint64_t e);

static struct rg_table *rg;
/* private per fd: opened with O_APPEND; the gen at which [size, end) was noted */
static struct { uint8_t append; uint64_t gen, from; } fdp[RG_FDS];
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


static void untrack(int fd) {
  if (rg && fd >= 0 && fd < RG_FDS) __atomic_store_n(&rg->fds[fd].ino, 0, __ATOMIC_RELEASE);
}

/* The fd's file becomes wholly changed and stays untracked (its writes go where the agent does not see). */
static void opaque_fd(int fd) {
  if (!rg || fd < 0) return;
  struct stat st;
  if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) {
    note_file(st.st_dev, st.st_ino, 0, RG_END);
    cow_before(fd, NULL, st.st_dev, st.st_ino, 0, RG_END); /* its next writes will not be seen */
  }
  untrack(fd);
}

/* An open that the agent saw: a regular file opened for writing is tracked from now on. */
TG_HIDDEN void tg_ranges_opened(int fd, int flags, const struct stat *st) {
  if (!rg || fd < 0) return;
  if (fd >= RG_FDS) { /* untracked: whole */
    note_file(st->st_dev, st->st_ino, 0, RG_END);
    cow_before(fd, NULL, st->st_dev, st->st_ino, 0, RG_END);
    return;
  }
  fdp[fd].append = (flags & O_APPEND) != 0;
  fdp[fd].gen = UINT64_MAX;
  rg->fds[fd].dev = st->st_dev;
  __atomic_store_n(&rg->fds[fd].ino, st->st_ino, __ATOMIC_RELEASE);
  if (flags & O_TRUNC) note_file(st->st_dev, st->st_ino, 0, RG_END);
}

/* A file opened for writing where the agent cannot follow its writes (fopen: stdio writes inside libc). */
TG_HIDDEN void tg_ranges_whole(int fd) { opaque_fd(fd); }

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


/* ---- copy-before-write ---- */

static char dir_path[sizeof tg.sock_base];
#define COW_SEEN 4096
static uint64_t cow_seen[COW_SEEN]; /* pages this process saved for the current gen (a hint: saving twice is harmless) */

static uint64_t page_key(uint64_t gen, uint64_t dev, uint64_t ino, uint64_t pg) {
  uint64_t h = (gen * 0x9e3779b97f4a7c15ull) ^ (dev * 0xff51afd7ed558ccdull) ^ (ino * 0xc4ceb9fe1a85ec53ull) ^ pg;
  h ^= h >> 29;
  return h ? h : 1;
}

/* A page could not be saved: `lost` takes why (the first reason wins; the daemon names it when it
 * fails the checkpoint): a COW_LOST_* code, and the errno (negated system call result) << 8. */
enum { COW_LOST_LOG_OPEN = 1, COW_LOST_NOMEM, COW_LOST_READ, COW_LOST_LOG_WRITE, COW_LOST_LOG_FULL, COW_LOST_DEADLINE, COW_LOST_OPEN, COW_LOST_STAT };
static void cow_lost(uint32_t why, long r) {
  uint32_t z = 0, v = why | (r < 0 && r > -4096 ? (uint32_t)-r << 8 : 0);
  if (cow) __atomic_compare_exchange_n(&cow->h.lost, &z, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

/* Appends the bytes [a, b) of the file (read through rfd) to the log, in chunks. */
static void cow_save(int rfd, uint64_t gen, uint64_t dev, uint64_t ino, uint64_t a, uint64_t b) {
  int all = 1;
  for (uint64_t pg = a / 4096; pg < b / 4096 && all; pg++) {
    uint64_t k = page_key(gen, dev, ino, pg);
    if (__atomic_load_n(&cow_seen[k % COW_SEEN], __ATOMIC_RELAXED) != k) all = 0;
  }
  if (all) return;
  char lp[sizeof dir_path + 32];
  snprintf(lp, sizeof lp, "%s/files.cow-log", dir_path);
  long lfd = tg_sys4(SYS_openat, AT_FDCWD, lp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (lfd < 0) { cow_lost(COW_LOST_LOG_OPEN, lfd); return; }
  const uint64_t chunk = 1 << 20;
  long m = tg_sys6l(SYS_mmap, 0, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if ((unsigned long)m > -4096UL) { cow_lost(COW_LOST_NOMEM, m); tg_sys1(SYS_close, lfd); return; }
  for (uint64_t off = a; off < b; off += chunk) {
    uint64_t len = b - off < chunk ? b - off : chunk;
    uint64_t got = 0;
    while (got < len) {
      long r = tg_sys4(SYS_pread64, rfd, (char *)m + got, len - got, off + got);
      if (r == -EINTR) continue;
      if (r < 0) { cow_lost(COW_LOST_READ, r); goto out; }
      if (r == 0) break;
      got += (uint64_t)r;
    }
    memset((char *)m + got, 0, len - got); /* past the end: zeros */
    struct cow_rec rec = {gen, dev, ino, off, len};
    struct iovec iov[2] = {{&rec, sizeof rec}, {(void *)m, len}};
    long w = tg_sys3(SYS_writev, lfd, iov, 2);
    if (w != (long)(sizeof rec + len)) { cow_lost(COW_LOST_LOG_WRITE, w < 0 ? w : -EIO); goto out; }
    long end = tg_sys3(SYS_lseek, lfd, 0, SEEK_CUR); /* (appended: the log's size) */
    if (end < 0 || (uint64_t)end > COW_LOG_CAP) { cow_lost(end < 0 ? COW_LOST_LOG_WRITE : COW_LOST_LOG_FULL, end); goto out; }
  }
  for (uint64_t pg = a / 4096; pg < b / 4096; pg++) {
    uint64_t k = page_key(gen, dev, ino, pg);
    __atomic_store_n(&cow_seen[k % COW_SEEN], k, __ATOMIC_RELAXED);
  }
out:
  tg_sys2(SYS_munmap, m, chunk);
  tg_sys1(SYS_close, lfd);
}

/* A readable fd of the file being changed: path, or wfd reopened for reading (its own description:
 * no offset moved), or, when this user may not open the file (a worker of another uid writing
 * through an fd its root parent opened), a copy of wfd if that is open for reading too. */
static long open_read(int wfd, const char *path) {
  char p[64];
  if (path) return tg_sys4(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
  snprintf(p, sizeof p, "/proc/self/fd/%d", wfd);
  long r = tg_sys4(SYS_openat, AT_FDCWD, p, O_RDONLY | O_CLOEXEC, 0);
  if (r >= 0 || wfd < 0) return r;
  long fl = tg_sys2(SYS_fcntl, wfd, F_GETFL);
  if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) return r;
  return tg_sys3(SYS_fcntl, wfd, F_DUPFD_CLOEXEC, 0); /* (pread only: the shared offset is not moved) */
}

/* Before [s, e) of (dev, ino) changes: the pages of it the daemon has still to read are saved.
 * rfd: a readable fd of the file, or -1 (then wfd is reopened for reading, or path opened). */
static void cow_before(int wfd, const char *path, uint64_t dev, uint64_t ino, uint64_t s, uint64_t e) {
  struct cow_table *c = cow;
  if (!c || !__atomic_load_n(&c->h.active, __ATOMIC_ACQUIRE) || e <= s) return;
  int saved_errno = errno;
  long rfd = -1;
  uint64_t ps = s / 4096 * 4096, pe = e >= RG_END - 4096 ? RG_END : (e + 4095) / 4096 * 4096;
  for (;;) {
    uint32_t act = __atomic_load_n(&c->h.active, __ATOMIC_ACQUIRE);
    if (!act || __atomic_load_n(&c->h.lost, __ATOMIC_ACQUIRE)) break; /* (lost: nothing saved matters any more) */
    uint64_t gen = __atomic_load_n(&c->h.gen, __ATOMIC_ACQUIRE);
    if (act == 2) {
      /* every page, up to the file's end now (what lies past it: past the end at the cut, or saved by the truncation that cut it) */
      uint64_t dl = __atomic_load_n(&c->h.deadline, __ATOMIC_ACQUIRE);
      uint64_t now = tg_now_ns(CLOCK_MONOTONIC);
      if (dl && (now > dl || dl - now > 120000000000ull)) { cow_lost(COW_LOST_DEADLINE, 0); break; } /* (past it, or from another boot's clock) */
      if (rfd < 0 && (rfd = open_read(wfd, path)) < 0) { cow_lost(COW_LOST_OPEN, rfd); break; }
      struct stat st;
      long sr = tg_sys2(SYS_fstat, rfd, &st);
      if (sr != 0) { cow_lost(COW_LOST_STAT, sr); break; }
      uint64_t top = ((uint64_t)st.st_size + 4095) / 4096 * 4096, b = pe < top ? pe : top;
      if (b <= ps) break;
      if (b - ps <= COW_WAIT) { cow_save((int)rfd, gen, dev, ino, ps, b); break; }
      /* too much to save: wait for the set (the daemon publishes it in a few ms) */
      struct timespec ts = {0, 1000000};
      tg_sys2(SYS_nanosleep, &ts, NULL);
      continue;
    }
    uint32_t n = __atomic_load_n(&c->h.count, __ATOMIC_ACQUIRE);
    if (n > COW_CAP) n = COW_CAP;
    /* first entry of the file ending after ps */
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
      uint32_t mid = lo + (hi - lo) / 2;
      const struct rg_entry *x = &c->e[mid];
      int before = x->dev < dev || (x->dev == dev && (x->ino < ino || (x->ino == ino && x->end <= ps)));
      if (before) lo = mid + 1;
      else hi = mid;
    }
    for (uint32_t i = lo; i < n; i++) {
      const struct rg_entry *x = &c->e[i];
      if (x->dev != dev || x->ino != ino || x->start >= pe) break;
      uint64_t a = x->start > ps ? x->start : ps, b = x->end < pe ? x->end : pe;
      if (a >= b) continue;
      if (rfd < 0 && (rfd = open_read(wfd, path)) < 0) { cow_lost(COW_LOST_OPEN, rfd); break; }
      cow_save((int)rfd, gen, dev, ino, a, b);
    }
    break;
  }
  if (rfd >= 0) tg_sys1(SYS_close, rfd);
  errno = saved_errno;
}

/* A path about to be truncated (open with O_TRUNC, truncate): its pending pages from `from` on. */
TG_HIDDEN void tg_ranges_before_truncate(int dirfd, const char *path, uint64_t from) {
  if (!cow || !__atomic_load_n(&cow->h.active, __ATOMIC_ACQUIRE) || !path) return;
  int saved_errno = errno;
  struct stat st;
  if (tg_sys4(SYS_newfstatat, dirfd, path, &st, 0) == 0 && S_ISREG(st.st_mode)) {
    long fd = tg_sys4(SYS_openat, dirfd, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd >= 0) {
      char p[64];
      snprintf(p, sizeof p, "/proc/self/fd/%d", (int)fd);
      struct stat st2;
      if (tg_sys2(SYS_fstat, fd, &st2) == 0 && st2.st_ino == st.st_ino) cow_before(-1, p, st.st_dev, st.st_ino, from, RG_END);
      tg_sys1(SYS_close, fd);
    }
  }
  errno = saved_errno;
}

/* A write through a tracked fd: in flight from begin to end (a slot says so to the daemon), noted
 * before and after, the pages it changes saved first while the daemon has still to read them. */
struct wr { int slot, on; uint64_t start, end; };

static void begin_write(struct wr *w, int fd, uint64_t start, uint64_t end) {
  w->on = tracked(fd);
  w->slot = -1;
  if (!w->on) return;
  w->start = start;
  w->end = end;
  uint64_t dev = rg->fds[fd].dev, ino = rg->fds[fd].ino;
  for (int i = 0; i < RG_SLOTS; i++) {
    uint64_t z = 0;
    if (__atomic_load_n(&rg->slots[i].busy, __ATOMIC_RELAXED) == 0 &&
        __atomic_compare_exchange_n(&rg->slots[i].busy, &z, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
      rg->slots[i].dev = dev;
      rg->slots[i].ino = ino;
      rg->slots[i].start = start;
      rg->slots[i].end = end;
      __atomic_store_n(&rg->slots[i].busy, 2, __ATOMIC_RELEASE);
      w->slot = i;
      break;
    }
  }
  if (w->slot < 0) __atomic_fetch_add(&rg->h.busy_unslotted, 1, __ATOMIC_ACQ_REL);
  note_file(dev, ino, start, end);
  cow_before(fd, NULL, dev, ino, start, end);
}

static void end_write(struct wr *w, int fd, long long done) {
  if (!w->on || !rg) return;
  int e = errno;
  if (done > 0 && tracked(fd)) note_file(rg->fds[fd].dev, rg->fds[fd].ino, w->start, w->end);
  if (w->slot >= 0) __atomic_store_n(&rg->slots[w->slot].busy, 0, __ATOMIC_RELEASE);
  else __atomic_fetch_sub(&rg->h.busy_unslotted, 1, __ATOMIC_ACQ_REL);
  errno = e;
}

/* The range a write of len bytes at off (< 0: the fd's offset) touches; appends: from the size. */
static void write_range(int fd, long long off, uint64_t len, int append, uint64_t *s, uint64_t *e) {
  if (append || (fd >= 0 && fd < RG_FDS && fdp[fd].append)) {
    /* from the size; noted once per interval unless the daemon is still reading (the page at the end changes) */
    uint64_t gen = __atomic_load_n(&rg->h.gen, __ATOMIC_ACQUIRE);
    int reading = cow && __atomic_load_n(&cow->h.active, __ATOMIC_ACQUIRE);
    *e = RG_END;
    if (!append && !reading && fdp[fd].gen == gen) { *s = fdp[fd].from; return; }
    struct stat st;
    *s = tg_sys2(SYS_fstat, fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (!append) { fdp[fd].gen = gen; fdp[fd].from = *s; }
    return;
  }
  if (off < 0) off = tg_sys3(SYS_lseek, fd, 0, SEEK_CUR);
  if (off < 0) { *s = 0; *e = RG_END; return; }
  *s = (uint64_t)off;
  *e = (uint64_t)off + len;
}

#define WRITE_BEGIN(fd, off, len, append) \
  struct wr w_; \
  if (!tracked(fd)) w_.on = 0; \
  else { uint64_t s_, e_; write_range((fd), (off), (len), (append), &s_, &e_); begin_write(&w_, (fd), s_, e_); }
#define WRITE_END(fd, r) end_write(&w_, (fd), (long long)(r))

/* Every write is noted before the call (a write in flight at the cut is in the cut's ranges) and
 * after it (a write that lands after the cut is in the next one); the second note costs nothing
 * when the first covers it in the same interval. */
typedef ssize_t (*write_fn)(int, const void *, size_t);
EXPORT ssize_t write(int fd, const void *b, size_t n) {
  REAL(write, write_fn, -1)
  if (!tracked(fd)) return real_write(fd, b, n);
  WRITE_BEGIN(fd, -1, n, 0)
  ssize_t r = real_write(fd, b, n);
  WRITE_END(fd, r);
  return r;
}

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
#define PWRITE_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const void *b, size_t n, off_t off) { \
    REAL(name, pwrite_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, b, n, off); \
    WRITE_BEGIN(fd, off, n, 0) \
    ssize_t r = real_##name(fd, b, n, off); \
    WRITE_END(fd, r); \
    return r; \
  }
PWRITE_WRAPPER(pwrite)
PWRITE_WRAPPER(pwrite64)

typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
  REAL(writev, writev_fn, -1)
  if (!tracked(fd)) return real_writev(fd, iov, cnt);
  WRITE_BEGIN(fd, -1, iov_len(iov, cnt), 0)
  ssize_t r = real_writev(fd, iov, cnt);
  WRITE_END(fd, r);
  return r;
}

typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
#define PWRITEV_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off) { \
    REAL(name, pwritev_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, iov, cnt, off); \
    WRITE_BEGIN(fd, off, iov_len(iov, cnt), 0) \
    ssize_t r = real_##name(fd, iov, cnt, off); \
    WRITE_END(fd, r); \
    return r; \
  }
PWRITEV_WRAPPER(pwritev)
PWRITEV_WRAPPER(pwritev64)

typedef ssize_t (*pwritev2_fn)(int, const struct iovec *, int, off_t, int);
#define PWRITEV2_WRAPPER(name) \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off, int fl) { \
    REAL(name, pwritev2_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, iov, cnt, off, fl); \
    WRITE_BEGIN(fd, off, iov_len(iov, cnt), (fl & RWF_APPEND) != 0) \
    ssize_t r = real_##name(fd, iov, cnt, off, fl); \
    WRITE_END(fd, r); \
    return r; \
  }
PWRITEV2_WRAPPER(pwritev2)
PWRITEV2_WRAPPER(pwritev64v2)

/* Size changes: from the smaller of the old and the new size to the end. */
typedef int (*ftruncate_fn)(int, off_t);
#define FTRUNCATE_WRAPPER(name) \
  EXPORT int name(int fd, off_t len) { \
    REAL(name, ftruncate_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, len); \
    struct stat st; \
    uint64_t from = tg_sys2(SYS_fstat, fd, &st) == 0 && (uint64_t)st.st_size < (uint64_t)len ? (uint64_t)st.st_size : (uint64_t)len; \
    struct wr w_; \
    begin_write(&w_, fd, from, RG_END); \
    int r = real_##name(fd, len); \
    end_write(&w_, fd, 1); \
    return r; \
  }
FTRUNCATE_WRAPPER(ftruncate)
FTRUNCATE_WRAPPER(ftruncate64)

/* Allocation past the end: the new bytes (zeros) from the old end ([s, e) empty: none). */
static void grow_range(int fd, uint64_t *s, uint64_t *e) {
  struct stat st;
  if (tg_sys2(SYS_fstat, fd, &st) != 0) return;
  if ((uint64_t)st.st_size > *s) *s = (uint64_t)st.st_size;
  if (*s > *e) *s = *e;
}

typedef int (*fallocate_fn)(int, int, off_t, off_t);
#define FALLOCATE_WRAPPER(name) \
  EXPORT int name(int fd, int mode, off_t off, off_t len) { \
    REAL(name, fallocate_fn, -1) \
    if (!tracked(fd)) return real_##name(fd, mode, off, len); \
    uint64_t s_ = (uint64_t)off, e_ = (uint64_t)off + (uint64_t)len; \
    if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) e_ = RG_END; /* bytes move up to the end */ \
    else if (!(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))) { \
      if (mode & FALLOC_FL_KEEP_SIZE) return real_##name(fd, mode, off, len); \
      grow_range(fd, &s_, &e_); \
    } \
    struct wr w_; \
    begin_write(&w_, fd, s_, e_); \
    int r = real_##name(fd, mode, off, len); \
    end_write(&w_, fd, 1); \
    return r; \
  }
FALLOCATE_WRAPPER(fallocate)
FALLOCATE_WRAPPER(fallocate64)

typedef int (*pfallocate_fn)(int, off_t, off_t);
#define PFALLOCATE_WRAPPER(name) \
  EXPORT int name(int fd, off_t off, off_t len) { \
    REAL(name, pfallocate_fn, ENOSYS) \
    if (!tracked(fd)) return real_##name(fd, off, len); \
    uint64_t s_ = (uint64_t)off, e_ = (uint64_t)off + (uint64_t)len; \
    grow_range(fd, &s_, &e_); \
    struct wr w_; \
    begin_write(&w_, fd, s_, e_); \
    int r = real_##name(fd, off, len); \
    end_write(&w_, fd, 1); \
    return r; \
  }
PFALLOCATE_WRAPPER(posix_fallocate)
PFALLOCATE_WRAPPER(posix_fallocate64)

typedef ssize_t (*cfr_fn)(int, off_t *, int, off_t *, size_t, unsigned);
EXPORT ssize_t copy_file_range(int in, off_t *inoff, int out, off_t *outoff, size_t n, unsigned fl) {
  REAL(copy_file_range, cfr_fn, -1)
  if (!tracked(out)) return real_copy_file_range(in, inoff, out, outoff, n, fl);
  WRITE_BEGIN(out, outoff ? *outoff : -1, n, 0)
  ssize_t r = real_copy_file_range(in, inoff, out, outoff, n, fl);
  WRITE_END(out, r);
  return r;
}

typedef ssize_t (*sendfile_fn)(int, int, off_t *, size_t);
#define SENDFILE_WRAPPER(name) \
  EXPORT ssize_t name(int out, int in, off_t *inoff, size_t n) { \
    REAL(name, sendfile_fn, -1) \
    if (!tracked(out)) return real_##name(out, in, inoff, n); \
    WRITE_BEGIN(out, -1, n, 0) \
    ssize_t r = real_##name(out, in, inoff, n); \
    WRITE_END(out, r); \
    return r; \
  }
SENDFILE_WRAPPER(sendfile)
SENDFILE_WRAPPER(sendfile64)

typedef ssize_t (*splice_fn)(int, loff_t *, int, loff_t *, size_t, unsigned);
EXPORT ssize_t splice(int in, loff_t *inoff, int out, loff_t *outoff, size_t n, unsigned fl) {
  REAL(splice, splice_fn, -1)
  if (!tracked(out)) return real_splice(in, inoff, out, outoff, n, fl);
  WRITE_BEGIN(out, outoff ? *outoff : -1, n, 0)
  ssize_t r = real_splice(in, inoff, out, outoff, n, fl);
  WRITE_END(out, r);
  return r;
}

/* A shared writable mapping: its writes are not seen; the file is wholly changed while it may be mapped. */
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
#define MMAP_WRAPPER(name) \
  EXPORT void *name(void *a, size_t n, int prot, int fl, int fd, off_t off) { \
    REAL(name, mmap_fn, MAP_FAILED) \
    if (fd >= 0 && (prot & PROT_WRITE) && ((fl & MAP_TYPE) == MAP_SHARED || (fl & MAP_TYPE) == MAP_SHARED_VALIDATE) && rg) { \
      int e = errno; \
      struct stat st; \
      if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) { \
        note_file(st.st_dev, st.st_ino, 0, RG_END); \
        cow_before(fd, NULL, st.st_dev, st.st_ino, 0, RG_END); /* its writes cannot be seen */ \
      } \
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

static struct cow_table *map_cow(void) {
  char p[sizeof dir_path + 32];
  snprintf(p, sizeof p, "%s/files.cow", dir_path);
  long fd = tg_sys4(SYS_openat, AT_FDCWD, p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return NULL;
  struct stat st;
  void *m = MAP_FAILED;
  if (tg_sys2(SYS_fstat, fd, &st) == 0 && ((uint64_t)st.st_size >= sizeof(struct cow_table) || tg_sys2(SYS_ftruncate, fd, sizeof(struct cow_table)) == 0))
    m = (void *)tg_sys6l(SYS_mmap, 0, sizeof(struct cow_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  tg_sys1(SYS_close, fd);
  if ((unsigned long)m > -4096UL) return NULL;
  /* The log of the saved pages is made now, while this process has the rights it started with: a
   * process that gives up root later is granted it with files.cow (native/common/agentdir.c); the
   * daemon empties it in place at each cut (never a new file: the grants stay). Already there
   * (EEXIST), or not makeable here (then the daemon makes it and grants the app's users): fine. */
  snprintf(p, sizeof p, "%s/files.cow-log", dir_path);
  long lfd = tg_sys4(SYS_openat, AT_FDCWD, p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (lfd >= 0) tg_sys1(SYS_close, lfd);
  return m;
}

static struct rg_table *new_table(void) {
  size_t dl;
  const char *slash = strrchr(tg.sock_base, '/');
  if (!slash) return NULL;
  dl = (size_t)(slash - tg.sock_base);
  if (dl >= sizeof dir_path) return NULL;
  memcpy(dir_path, tg.sock_base, dl);
  dir_path[dl] = 0;
  if (!cow) cow = map_cow();
  if (!cow) return NULL; /* without it no write could be saved before it lands: every fd untracked */
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
    if (tg_sys2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode)) {
      note_file(st.st_dev, st.st_ino, 0, RG_END);
      cow_before(fd, NULL, st.st_dev, st.st_ino, 0, RG_END); /* (an exec while the daemon reads) */
    }
  }
}

static int files_on;
TG_HIDDEN int tg_files_on(void) { return files_on; }

TG_HIDDEN void tg_ranges_init(void) {
  const char *on = getenv("TARDIGRADE_FILES_RANGES");
  if (!on || strcmp(on, "1") != 0 || !tg.active) return;
  files_on = 1;
  rg = new_table();
  if (rg) inherited_fds();
}

/* A restored process: its files.cow was written back as it was at the checkpoint (maybe "every
 * page", with a deadline on the clock of then), and no daemon reads the files of that cut: saving stops. */
TG_HIDDEN void tg_ranges_after_restore(void) {
  last.idx = -1;
  if (cow) __atomic_store_n(&cow->h.active, 0, __ATOMIC_RELEASE);
}

/* The parent's tracked fds at the instant of a fork, taken in fork's prepare handler: the child
 * starts from these, not from the parent's live table, which the parent may change first (a
 * parent closing its copies right after fork, as a server handing a log to a worker does, left
 * the child's writes untracked: the file copied whole at the next cut). */
static struct rg_fd fork_fds[RG_FDS];
static int fork_fds_taken;

TG_HIDDEN void tg_ranges_before_fork(void) {
  fork_fds_taken = 0;
  if (!rg) return;
  memcpy(fork_fds, rg->fds, sizeof fork_fds);
  fork_fds_taken = 1;
}

/* In a forked child: a table of its own, with the fds it inherited. */
TG_HIDDEN void tg_ranges_after_fork(void) {
  struct rg_table *old = rg;
  last.idx = -1;
  if (!old) return;
  rg = NULL;
  /* (tests: the child slow to get here, while its parent changes its table) */
  const char *slow = getenv("TARDIGRADE_TEST_AFTER_FORK_MS");
  if (slow) {
    struct timespec ts = {0, (long)atoi(slow) * 1000000L};
    tg_sys2(SYS_nanosleep, &ts, NULL);
  }
  struct rg_table *t = new_table();
  if (t) memcpy(t->fds, fork_fds_taken ? fork_fds : old->fds, sizeof t->fds);
  fork_fds_taken = 0;
  tg_sys2(SYS_munmap, old, sizeof(struct rg_table));
  rg = t;
}
