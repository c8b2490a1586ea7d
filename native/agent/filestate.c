/* FILE_STATE records (docs/format.md): every regular file the application holds open for writing or
 * maps shared and writable, as it is at the checkpoint (identity, size, times, generation), so that a
 * restore can refuse when such a file changed since. Runs in the parent while every thread is parked,
 * after the FD records were written: no allocation, syscalls only. */
#include "agent.h"
#include "track.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "../common/sys.h"

#define MAX_FILES 1024
#define MAX_RANGES 4096

struct fs_file {
  struct tg_rec_file_state r;
  const char *path;
  size_t pathlen;
};
static struct fs_file files[MAX_FILES];
static int nfiles;
/* byte ranges of a file covered by its shared writable mappings (their contents are captured) */
static struct { int file; uint64_t lo, hi; } ranges[MAX_RANGES];
static int nranges;

static int ends_with(const char *p, size_t n, const char *s) {
  size_t sl = strlen(s);
  return n >= sl && memcmp(p + n - sl, s, sl) == 0;
}

static void fill_stat(struct tg_rec_file_state *r, const struct stat *st, int fd) {
  r->dev = st->st_dev;
  r->ino = st->st_ino;
  r->size = (uint64_t)st->st_size;
  r->mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
  r->ctime_ns = (uint64_t)st->st_ctim.tv_sec * 1000000000ull + (uint64_t)st->st_ctim.tv_nsec;
  r->mode = st->st_mode;
  int gen = 0;
  /* ext4, xfs, btrfs: the inode generation tells a reused inode number from the old file */
  if (tg_sys3(SYS_ioctl, fd, FS_IOC_GETVERSION, &gen) == 0) {
    r->generation = (uint32_t)gen;
    r->flags |= TG_FS_GENERATION;
  }
}

static struct fs_file *find(uint64_t dev, uint64_t ino) {
  for (int i = 0; i < nfiles; i++) if (files[i].r.dev == dev && files[i].r.ino == ino) return &files[i];
  return NULL;
}

static struct fs_file *add(const struct stat *st, int fd, const char *path, size_t pathlen) {
  if (nfiles >= MAX_FILES) return NULL;
  struct fs_file *f = &files[nfiles++];
  memset(f, 0, sizeof *f);
  f->r.fd = UINT32_MAX;
  fill_stat(&f->r, st, fd);
  f->path = path;
  f->pathlen = pathlen;
  return f;
}

/* Files held for writing through an fd: from the FD records already in buf. */
static int from_fds(const char *buf, uint64_t len, char *err, size_t errlen) {
  for (uint64_t off = 0; off + sizeof(struct tg_rec_header) <= len;) {
    const struct tg_rec_header *h = (const void *)(buf + off);
    const char *p = buf + off + sizeof *h;
    off += sizeof *h + ((h->payload_len + 7) & ~7ull);
    if (h->type != TG_REC_FD || h->payload_len < sizeof(struct tg_rec_fd)) continue;
    struct tg_rec_fd rec;
    memcpy(&rec, p, sizeof rec);
    if (rec.kind != TG_FD_FILE || (rec.open_flags & O_ACCMODE) == O_RDONLY) continue;
    struct stat st;
    long e = tg_sys2(SYS_fstat, rec.fd, &st);
    if (e < 0) { snprintf(err, errlen, "fd %u: fstat: %s", rec.fd, strerror((int)-e)); return -1; }
    struct fs_file *f = find(st.st_dev, st.st_ino);
    if (!f && !(f = add(&st, (int)rec.fd, p + sizeof rec, rec.extra_len))) {
      snprintf(err, errlen, "more than %d files open for writing", MAX_FILES);
      return -1;
    }
    f->r.flags |= TG_FS_FD_WRITE;
    if (rec.fd < f->r.fd) f->r.fd = rec.fd;
  }
  return 0;
}

/* Files mapped shared and writable (deleted ones are captured as memory and are not at stake;
 * one still linked under another name is: tg_vma_relinked). */
static int from_maps(const char *maps, long ml, char *err, size_t errlen) {
  for (const char *l = maps; l < maps + ml;) {
    const char *e = tg_next_line(l, maps + ml);
    struct tg_vma v;
    int ok = tg_parse_maps_line(l, e, &v) == 0;
    l = e + 1;
    static char relinked[4096]; /* (a file still linked under another name is at stake: tg_vma_relinked) */
    if (!ok || !v.ino || !v.shared || !(v.prot & 2) || v.path[0] != '/' ||
        (ends_with(v.path, v.pathlen, " (deleted)") && !tg_vma_relinked(&v, relinked, sizeof relinked)))
      continue;
    char mf[80];
    snprintf(mf, sizeof mf, "/proc/self/map_files/%llx-%llx", (unsigned long long)v.start, (unsigned long long)v.end);
    int fd = (int)tg_sys3(SYS_open, mf, O_RDONLY | O_CLOEXEC, 0);
    struct stat st;
    long r;
    if (fd == -EPERM && v.pathlen < 4096) {
      /* map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: a process that gave up root
       * (docs/engine.md, "Processes of another user") finds the file by its path, checked to be
       * the mapped inode (no read permission needed for that) */
      char path[4096];
      memcpy(path, v.path, v.pathlen);
      path[v.pathlen] = 0;
      r = tg_sys2(SYS_stat, path, &st);
      if (r == 0 && st.st_ino == v.ino) fd = -1;
      else fd = r < 0 ? (int)r : -ENOENT;
      if (fd == -1) goto have_stat;
    }
    if (fd < 0) {
      snprintf(err, errlen, "mapping %llx-%llx of %.*s: cannot open it through %s: %s", (unsigned long long)v.start,
               (unsigned long long)v.end, (int)v.pathlen, v.path, mf, strerror(-fd));
      return -1;
    }
    r = tg_sys2(SYS_fstat, fd, &st);
  have_stat:
    if (r < 0 || !S_ISREG(st.st_mode)) { if (fd >= 0) tg_sys1(SYS_close, fd); continue; } /* a device: not a data file */
    if ((uint64_t)st.st_size > TG_SHARED_CONTENT_MAX) {
      if (fd >= 0) tg_sys1(SYS_close, fd);
      snprintf(err, errlen,
               "mapping %llx-%llx of %.*s is shared and writable and the file is %llu MiB: only files up to %llu MiB "
               "mapped this way are captured (their contents go into the checkpoint). Map it private or read-only, "
               "or keep the file under %llu MiB",
               (unsigned long long)v.start, (unsigned long long)v.end, (int)v.pathlen, v.path,
               (unsigned long long)((uint64_t)st.st_size >> 20), TG_SHARED_CONTENT_MAX >> 20, TG_SHARED_CONTENT_MAX >> 20);
      return -1;
    }
    struct fs_file *f = find(st.st_dev, st.st_ino);
    if (!f) f = add(&st, fd, v.path, v.pathlen);
    if (fd >= 0) tg_sys1(SYS_close, fd);
    if (!f || nranges >= MAX_RANGES) { snprintf(err, errlen, "too many files mapped shared and writable"); return -1; }
    f->r.flags |= TG_FS_MAPPED;
    ranges[nranges].file = (int)(f - files);
    ranges[nranges].lo = v.pgoff;
    ranges[nranges].hi = v.pgoff + (v.end - v.start);
    nranges++;
  }
  return 0;
}

/* How far from offset 0 the file's mapped ranges reach without a gap. */
static uint64_t covered_prefix(int file) {
  uint64_t cov = 0;
  for (int changed = 1; changed;) {
    changed = 0;
    for (int i = 0; i < nranges; i++)
      if (ranges[i].file == file && ranges[i].lo <= cov && ranges[i].hi > cov) { cov = ranges[i].hi; changed = 1; }
  }
  return cov;
}

TG_HIDDEN int tg_put_file_states(const char *fdrecs, uint64_t fdlen, const char *maps, long ml, tg_emit_fn put, void *ctx,
                                 char *err, size_t errlen) {
  nfiles = 0;
  nranges = 0;
  if (from_fds(fdrecs, fdlen, err, errlen) != 0) return -1;
  if (maps && ml > 0 && from_maps(maps, ml, err, errlen) != 0) return -1;
  for (int i = 0; i < nfiles; i++) {
    struct fs_file *f = &files[i];
    if (f->r.flags & TG_FS_MAPPED) {
      uint64_t cov = covered_prefix(i);
      f->r.covered = cov < f->r.size ? cov : f->r.size;
      if (cov >= f->r.size) f->r.flags |= TG_FS_COVERED;
    }
    int we = put(ctx, TG_REC_FILE_STATE, &f->r, sizeof f->r, f->path, f->pathlen);
    if (we != 0) {
      snprintf(err, errlen, "recording the file states: %s", strerror(we));
      return -1;
    }
  }
  return 0;
}

/* ---- contents of shared writable file mappings, copied while every thread is parked ----
 * The snapshot child's copy-on-write view does not freeze MAP_SHARED memory: the application writes
 * it on after the release. So the parent copies each such mapping (up to the file's end) into one
 * private region before the release; the child writes the pages from there. The region is mapped
 * after the last read of /proc/self/maps, so it is never part of an image. */
static struct { uint64_t start, end, copy; } copies[256];
static int ncopies;
static uint64_t copy_region, copy_len;

/* Every shared writable mapping with an object behind it: files, and also MAP_SHARED|MAP_ANONYMOUS
 * ("/dev/zero (deleted)"), memfd and System V segments, which the application writes on after the
 * release just the same (the snapshot child would read them at a later instant than the rest). */
static int wants_copy(const struct tg_vma *v) {
  /* (not the tracker's own shared memory: hash tables, copies of hot mappings; never in an image) */
  return v->ino && v->shared && (v->prot & 3) == 3 && v->pathlen > 0 && v->path[0] == '/' && !tg_track_owns(v->start, v->end);
}

/* The first shared writable mapping that wanted a copy and got none ("" if none): the capture
 * refuses then (tg_shared_copy_missed), rather than let the snapshot child read it after the app
 * resumed (a write in that window would land in the checkpoint). */
static char missed[512];

static void miss(const struct tg_vma *v, const char *why) {
  if (missed[0]) return;
  snprintf(missed, sizeof missed, "shared writable mapping %llx-%llx of %.*s: %s", (unsigned long long)v->start, (unsigned long long)v->end,
           (int)v->pathlen, v->path, why);
}

TG_HIDDEN const char *tg_shared_copy_missed(void) { return missed[0] ? missed : NULL; }

/* Bytes of the mapping that lie inside its file (0: none, or not a regular file; too large: noted
 * with miss). */
static uint64_t file_part(const struct tg_vma *v) {
  char mf[80];
  struct stat st;
  snprintf(mf, sizeof mf, "/proc/self/map_files/%llx-%llx", (unsigned long long)v->start, (unsigned long long)v->end);
  long sr = tg_sys2(SYS_stat, mf, &st);
  if (sr == -EPERM && v->pathlen < 4096) {
    /* without CAP_SYS_ADMIN (a process of another user): by its path, if it is the mapped inode */
    char path[4096];
    memcpy(path, v->path, v->pathlen);
    path[v->pathlen] = 0;
    sr = tg_sys2(SYS_stat, path, &st);
    if (sr == 0 && st.st_ino != v->ino) sr = -ENOENT;
  }
  if (sr != 0 || !S_ISREG(st.st_mode)) return 0;
  /* (a file that still has its name is refused by the capture's own check, capture.c, naming it) */
  if ((uint64_t)st.st_size > TG_SHARED_CONTENT_MAX && ends_with(v->path, v->pathlen, " (deleted)")) {
    char why[200];
    snprintf(why, sizeof why,
             "the object behind it is %llu MiB, and only up to %llu MiB is copied with the app parked (a larger one would be "
             "read after the app resumed and could mix two instants); keep such shared memory under %llu MiB",
             (unsigned long long)((uint64_t)st.st_size >> 20), TG_SHARED_CONTENT_MAX >> 20, TG_SHARED_CONTENT_MAX >> 20);
    miss(v, why);
    return 0;
  }
  if ((uint64_t)st.st_size > TG_SHARED_CONTENT_MAX) return 0;
  if ((uint64_t)st.st_size <= v->pgoff) return 0;
  uint64_t n = ((uint64_t)st.st_size - v->pgoff + TG_PAGE - 1) & ~(TG_PAGE - 1);
  return n < v->end - v->start ? n : v->end - v->start;
}

TG_HIDDEN void tg_copy_shared_contents(const char *maps, long ml) {
  ncopies = 0;
  copy_region = 0;
  copy_len = 0;
  missed[0] = 0;
  uint64_t total = 0;
  for (const char *l = maps; l < maps + ml;) {
    const char *e = tg_next_line(l, maps + ml);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && wants_copy(&v)) total += file_part(&v);
    l = e + 1;
  }
  if (!total) return;
  long r = tg_sys6l(SYS_mmap, 0, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if ((unsigned long)r > -4096UL) {
    snprintf(missed, sizeof missed, "no memory for a copy of the app's shared writable mappings (%llu MiB) while it is parked: %s",
             (unsigned long long)(total >> 20), strerror((int)-r));
    return;
  }
  copy_region = (uint64_t)r;
  copy_len = total;
  uint64_t at = copy_region;
  for (const char *l = maps; l < maps + ml;) {
    const char *e = tg_next_line(l, maps + ml);
    struct tg_vma v;
    uint64_t n;
    if (tg_parse_maps_line(l, e, &v) == 0 && wants_copy(&v) && (n = file_part(&v)) && at + n <= copy_region + total) {
      if (ncopies == 256) {
        miss(&v, "more than 256 shared writable mappings: the rest would be read after the app resumed");
        break;
      }
      memcpy((void *)at, (const void *)v.start, n);
      copies[ncopies].start = v.start;
      copies[ncopies].end = v.start + n;
      copies[ncopies].copy = at;
      ncopies++;
      at += n;
    }
    l = e + 1;
  }
}

TG_HIDDEN void tg_free_shared_copies(void) {
  if (copy_region) tg_sys2(SYS_munmap, copy_region, copy_len);
  copy_region = 0;
  ncopies = 0;
}

TG_HIDDEN const void *tg_shared_copy(uint64_t addr) {
  for (int i = 0; i < ncopies; i++)
    if (addr >= copies[i].start && addr < copies[i].end) return (const void *)(copies[i].copy + (addr - copies[i].start));
  return NULL;
}
