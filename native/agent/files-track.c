/* Which files the application touches (issue 14, docs/files.md): wrappers of the calls that open a
 * file for writing, create, truncate, rename, link or unlink one append its absolute path to the
 * app's file journal (`files.journal` beside the agent socket), one O_APPEND write per event, so
 * (directories made or removed: `mkdir`, `mkdirat`, `rmdir`, `unlinkat(AT_REMOVEDIR)`, op 'D'),
 * every process of the app (and one that exits or is killed) leaves what it touched where the
 * daemon reads it at the next checkpoint. Only paths are recorded here: the daemon decides what
 * changed (size, times, inode) and stores the contents. Reads and ordinary writes cost nothing. */
#include "agent.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../common/sys.h"

#define WRITE_FLAGS (O_WRONLY | O_RDWR | O_APPEND | O_TRUNC | O_CREAT)

/* A small cache of paths this process recorded (hash only): a file opened again and again is
 * recorded once per process. */
#define SEEN 256
static uint64_t seen[SEEN];

static uint64_t hash_path(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h ? h : 1;
}

/* The journal's path: the directory of the app's agent socket. "" when the agent is off. */
static const char *journal_dir(size_t *len) {
  if (!tg.active || !tg.sock_base[0]) return NULL;
  const char *slash = strrchr(tg.sock_base, '/');
  if (!slash) return NULL;
  *len = (size_t)(slash - tg.sock_base);
  return tg.sock_base;
}

/* Appends one entry ("<op><path>\0", two for a rename) with one write. Never changes errno. */
static void journal(char op, const char *path, char op2, const char *path2) {
  size_t dl;
  const char *dir = journal_dir(&dl);
  if (!dir || !path || path[0] != '/') return;
  size_t n1 = strlen(path), n2 = path2 ? strlen(path2) : 0;
  /* the agent's own files (its socket, the log) and the kernel's pseudo files are never the app's data */
  if ((n1 > dl && memcmp(path, dir, dl) == 0 && path[dl] == '/') || !strncmp(path, "/proc/", 6) || !strncmp(path, "/sys/", 5) ||
      !strncmp(path, "/dev/", 5))
    return;
  uint64_t h = hash_path(path, n1) ^ (path2 ? hash_path(path2, n2) * 31 : 0) ^ (uint64_t)op;
  if (__atomic_load_n(&seen[h % SEEN], __ATOMIC_RELAXED) == h) return;
  char buf[2 * PATH_MAX + 8];
  if (n1 + n2 + 4 > sizeof buf) return;
  size_t n = 0;
  buf[n++] = op;
  memcpy(buf + n, path, n1 + 1);
  n += n1 + 1;
  if (path2) {
    buf[n++] = op2;
    memcpy(buf + n, path2, n2 + 1);
    n += n2 + 1;
  }
  char jp[sizeof tg.sock_base + 16];
  memcpy(jp, dir, dl);
  memcpy(jp + dl, "/files.journal", 15);
  int saved = errno;
  long fd = tg_sys4(SYS_openat, AT_FDCWD, jp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) {
    if (tg_sys3(SYS_write, fd, buf, n) == (long)n && op != 'R') __atomic_store_n(&seen[h % SEEN], h, __ATOMIC_RELAXED);
    tg_sys1(SYS_close, fd);
  }
  errno = saved;
}

/* The absolute path of fd (a regular file), into out; 0 if it is one. */
static int fd_path(int fd, char *out, size_t cap, struct stat *st_out) {
  struct stat st;
  if (tg_sys2(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  *st_out = st;
  char link[40];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  long n = tg_sys3(SYS_readlink, link, out, cap - 1);
  if (n <= 0 || out[0] != '/') return -1;
  out[n] = 0;
  return 0;
}

static void opened(int fd, int flags) {
  if (fd < 0 || !tg.active || !(flags & WRITE_FLAGS)) return;
  char p[PATH_MAX];
  struct stat st;
  if (fd_path(fd, p, sizeof p, &st) != 0) return;
  journal('W', p, 0, NULL);
  if (flags & (O_WRONLY | O_RDWR)) tg_ranges_opened(fd, flags, &st); /* files-ranges.c */
}

/* path made absolute against dirfd (AT_FDCWD: the working directory); not resolved further. */
static int absolute(int dirfd, const char *path, char *out, size_t cap) {
  if (!path) return -1;
  if (path[0] == '/') {
    if (strlen(path) >= cap) return -1;
    strcpy(out, path);
    return 0;
  }
  long n;
  if (dirfd == AT_FDCWD) {
    n = tg_sys2(SYS_getcwd, out, cap);
    if (n <= 0) return -1;
    n = (long)strlen(out);
  } else {
    char link[40];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    n = tg_sys3(SYS_readlink, link, out, cap - 1);
    if (n <= 0 || out[0] != '/') return -1;
    out[n] = 0;
  }
  size_t pl = strlen(path);
  if ((size_t)n + pl + 2 > cap) return -1;
  if (n > 1) out[n++] = '/';
  memcpy(out + n, path, pl + 1);
  return 0;
}

static void touched(char op, int dirfd, const char *path) {
  if (!tg.active) return;
  char p[PATH_MAX];
  int saved = errno;
  if (absolute(dirfd, path, p, sizeof p) == 0) journal(op, p, 0, NULL);
  errno = saved;
}

#define REAL(name, type) \
  static type real_##name; \
  if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name); \
  if (!real_##name) { errno = ENOSYS; return -1; }

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*creat_fn)(const char *, mode_t);

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_WRAPPER(name) \
  __attribute__((visibility("default"))) int name(const char *path, int flags, ...) { \
    va_list ap; \
    va_start(ap, flags); \
    mode_t m = mode_arg(flags, ap); \
    va_end(ap); \
    REAL(name, open_fn) \
    if (flags & O_TRUNC) tg_ranges_before_truncate(AT_FDCWD, path, 0); \
    int fd = real_##name(path, flags, m); \
    opened(fd, flags); \
    return fd; \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

/* the fortified opens of programs built with _FORTIFY_SOURCE (no mode: O_CREAT goes the other way) */
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
#define OPEN2_WRAPPER(name) \
  __attribute__((visibility("default"))) int name(const char *path, int flags) { \
    REAL(name, open2_fn) \
    if (flags & O_TRUNC) tg_ranges_before_truncate(AT_FDCWD, path, 0); \
    int fd = real_##name(path, flags); \
    opened(fd, flags); \
    return fd; \
  }
OPEN2_WRAPPER(__open_2)
OPEN2_WRAPPER(__open64_2)
#define OPENAT2_WRAPPER(name) \
  __attribute__((visibility("default"))) int name(int dirfd, const char *path, int flags) { \
    REAL(name, openat2_fn) \
    if (flags & O_TRUNC) tg_ranges_before_truncate(dirfd, path, 0); \
    int fd = real_##name(dirfd, path, flags); \
    opened(fd, flags); \
    return fd; \
  }
OPENAT2_WRAPPER(__openat_2)
OPENAT2_WRAPPER(__openat64_2)

#define OPENAT_WRAPPER(name) \
  __attribute__((visibility("default"))) int name(int dirfd, const char *path, int flags, ...) { \
    va_list ap; \
    va_start(ap, flags); \
    mode_t m = mode_arg(flags, ap); \
    va_end(ap); \
    REAL(name, openat_fn) \
    if (flags & O_TRUNC) tg_ranges_before_truncate(dirfd, path, 0); \
    int fd = real_##name(dirfd, path, flags, m); \
    opened(fd, flags); \
    return fd; \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

#define CREAT_WRAPPER(name) \
  __attribute__((visibility("default"))) int name(const char *path, mode_t m) { \
    REAL(name, creat_fn) \
    tg_ranges_before_truncate(AT_FDCWD, path, 0); \
    int fd = real_##name(path, m); \
    opened(fd, O_CREAT | O_WRONLY); \
    return fd; \
  }
CREAT_WRAPPER(creat)
CREAT_WRAPPER(creat64)

/* stdio opens its files inside libc (not through open()): fopen for writing is wrapped too */
typedef FILE *(*fopen_fn)(const char *, const char *);
#define FOPEN_WRAPPER(name) \
  __attribute__((visibility("default"))) FILE *name(const char *path, const char *mode) { \
    static fopen_fn real; \
    if (!real) real = (fopen_fn)dlsym(RTLD_NEXT, #name); \
    if (!real) { errno = ENOSYS; return NULL; } \
    if (mode && strchr(mode, 'w')) tg_ranges_before_truncate(AT_FDCWD, path, 0); \
    FILE *f = real(path, mode); \
    if (f && mode && (strchr(mode, 'w') || strchr(mode, 'a') || strchr(mode, '+'))) { \
      int saved = errno; \
      opened(fileno(f), O_WRONLY); \
      tg_ranges_whole(fileno(f)); /* its writes happen inside libc */ \
      errno = saved; \
    } \
    return f; \
  }
FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)

typedef int (*path_fn)(const char *);
typedef int (*path2_fn)(const char *, const char *);
typedef int (*at_fn)(int, const char *, int);
typedef int (*at2_fn)(int, const char *, int, const char *);
typedef int (*at2f_fn)(int, const char *, int, const char *, unsigned);
typedef int (*link_at_fn)(int, const char *, int, const char *, int);
typedef int (*trunc_fn)(const char *, off_t);

/* rename: both names, in one journal write, before the call (the old name is then still there) */
static void renamed(int olddir, const char *oldp, int newdir, const char *newp) {
  if (!tg.active) return;
  char a[PATH_MAX], b[PATH_MAX];
  int saved = errno;
  if (absolute(olddir, oldp, a, sizeof a) == 0 && absolute(newdir, newp, b, sizeof b) == 0) journal('R', a, 'N', b);
  errno = saved;
}

__attribute__((visibility("default"))) int rename(const char *o, const char *n) {
  REAL(rename, path2_fn)
  renamed(AT_FDCWD, o, AT_FDCWD, n);
  return real_rename(o, n);
}
__attribute__((visibility("default"))) int renameat(int od, const char *o, int nd, const char *n) {
  REAL(renameat, at2_fn)
  renamed(od, o, nd, n);
  return real_renameat(od, o, nd, n);
}
__attribute__((visibility("default"))) int renameat2(int od, const char *o, int nd, const char *n, unsigned fl) {
  REAL(renameat2, at2f_fn)
  renamed(od, o, nd, n);
  return real_renameat2(od, o, nd, n, fl);
}
__attribute__((visibility("default"))) int unlink(const char *p) {
  REAL(unlink, path_fn)
  touched('U', AT_FDCWD, p);
  return real_unlink(p);
}
__attribute__((visibility("default"))) int unlinkat(int d, const char *p, int fl) {
  REAL(unlinkat, at_fn)
  if (!(fl & AT_REMOVEDIR)) touched('U', d, p);
  int r = real_unlinkat(d, p, fl);
  if (r == 0 && (fl & AT_REMOVEDIR)) touched('D', d, p); /* only once removed: a failed rmdir of a big tree adds nothing */
  return r;
}
/* directories made and removed: their paths join the set (the daemon restores the tree) */
typedef int (*mkdir_fn)(const char *, mode_t);
typedef int (*mkdirat_fn)(int, const char *, mode_t);
__attribute__((visibility("default"))) int mkdir(const char *p, mode_t m) {
  REAL(mkdir, mkdir_fn)
  int r = real_mkdir(p, m);
  if (r == 0) touched('D', AT_FDCWD, p);
  return r;
}
__attribute__((visibility("default"))) int mkdirat(int d, const char *p, mode_t m) {
  REAL(mkdirat, mkdirat_fn)
  int r = real_mkdirat(d, p, m);
  if (r == 0) touched('D', d, p);
  return r;
}
__attribute__((visibility("default"))) int rmdir(const char *p) {
  REAL(rmdir, path_fn)
  int r = real_rmdir(p);
  if (r == 0) touched('D', AT_FDCWD, p);
  return r;
}
__attribute__((visibility("default"))) int link(const char *o, const char *n) {
  REAL(link, path2_fn)
  int r = real_link(o, n);
  if (r == 0) renamed(AT_FDCWD, o, AT_FDCWD, n);
  return r;
}
__attribute__((visibility("default"))) int linkat(int od, const char *o, int nd, const char *n, int fl) {
  REAL(linkat, link_at_fn)
  int r = real_linkat(od, o, nd, n, fl);
  if (r == 0) renamed(od, o, nd, n);
  return r;
}
__attribute__((visibility("default"))) int truncate(const char *p, off_t len) {
  REAL(truncate, trunc_fn)
  touched('W', AT_FDCWD, p);
  tg_ranges_before_truncate(AT_FDCWD, p, len >= 0 ? (uint64_t)len : 0);
  return real_truncate(p, len);
}
__attribute__((visibility("default"))) int truncate64(const char *p, off_t len) {
  REAL(truncate64, trunc_fn)
  touched('W', AT_FDCWD, p);
  tg_ranges_before_truncate(AT_FDCWD, p, len >= 0 ? (uint64_t)len : 0);
  return real_truncate64(p, len);
}

/* mkstemp and its kin create the file inside libc (not through open()): a temporary file the app
 * made, wrote, closed and still had at a checkpoint (sort's runs) is in its set like any other. */
typedef int (*mkstemp_fn)(char *);
typedef int (*mkostemp_fn)(char *, int);
typedef int (*mkstemps_fn)(char *, int);
typedef int (*mkostemps_fn)(char *, int, int);
#define MKSTEMP_WRAPPER(name, type, params, args) \
  __attribute__((visibility("default"))) int name params { \
    REAL(name, type) \
    int fd = real_##name args; \
    opened(fd, O_CREAT | O_RDWR); \
    return fd; \
  }
MKSTEMP_WRAPPER(mkstemp, mkstemp_fn, (char *t), (t))
MKSTEMP_WRAPPER(mkstemp64, mkstemp_fn, (char *t), (t))
MKSTEMP_WRAPPER(mkostemp, mkostemp_fn, (char *t, int fl), (t, fl))
MKSTEMP_WRAPPER(mkostemp64, mkostemp_fn, (char *t, int fl), (t, fl))
MKSTEMP_WRAPPER(mkstemps, mkstemps_fn, (char *t, int sl), (t, sl))
MKSTEMP_WRAPPER(mkstemps64, mkstemps_fn, (char *t, int sl), (t, sl))
MKSTEMP_WRAPPER(mkostemps, mkostemps_fn, (char *t, int sl, int fl), (t, sl, fl))
MKSTEMP_WRAPPER(mkostemps64, mkostemps_fn, (char *t, int sl, int fl), (t, sl, fl))

/* freopen for writing (a daemon sending its stdout to a log) opens inside libc too */
typedef FILE *(*freopen_fn)(const char *, const char *, FILE *);
#define FREOPEN_WRAPPER(name) \
  __attribute__((visibility("default"))) FILE *name(const char *path, const char *mode, FILE *stream) { \
    static freopen_fn real; \
    if (!real) real = (freopen_fn)dlsym(RTLD_NEXT, #name); \
    if (!real) { errno = ENOSYS; return NULL; } \
    int writing = path && mode && (strchr(mode, 'w') || strchr(mode, 'a') || strchr(mode, '+')); \
    if (path && mode && strchr(mode, 'w')) tg_ranges_before_truncate(AT_FDCWD, path, 0); \
    FILE *f = real(path, mode, stream); \
    if (f && writing) { \
      int saved = errno; \
      opened(fileno(f), O_WRONLY); \
      tg_ranges_whole(fileno(f)); \
      errno = saved; \
    } \
    return f; \
  }
FREOPEN_WRAPPER(freopen)
FREOPEN_WRAPPER(freopen64)
