/* The snapshot child: a copy-on-write copy of the process taken while every thread was parked.
 * It writes the raw image (docs/format.md) to tg.img_fd and exits. Only syscalls and
 * non-allocating libc calls are used here: the copy may hold locks of threads that do not exist in
 * it. Buffers are mmap'ed (they are the child's own and never part of an image). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../common/crc32c.h"
#include "../common/sys.h"
#include "../common/sysvshm.h"
#include "pagemap.h"
#include "track.h"

struct writer {
  int fd;
  uint64_t off, nrec, pages;
  int err;
  char *mem; /* if set, records go to memory (mem, cap) instead of fd */
  uint64_t cap;
};

static int write_all(struct writer *w, struct iovec *iov, int cnt) {
  if (w->mem) {
    for (int i = 0; i < cnt; i++) {
      if (w->off + iov[i].iov_len > w->cap) { w->err = ENOSPC; return -1; }
      memcpy(w->mem + w->off, iov[i].iov_base, iov[i].iov_len);
      w->off += iov[i].iov_len;
    }
    return 0;
  }
  while (cnt > 0) {
    long r = tg_sys3(SYS_writev, w->fd, iov, cnt);
    if (r == -EINTR) continue;
    if (r <= 0) { w->err = r < 0 ? (int)-r : EIO; return -1; }
    w->off += (uint64_t)r;
    while (cnt > 0 && (size_t)r >= iov->iov_len) { r -= (long)iov->iov_len; iov++; cnt--; }
    if (cnt > 0) { iov->iov_base = (char *)iov->iov_base + r; iov->iov_len -= (size_t)r; }
  }
  return 0;
}

/* One record: header, payload = a || b, padding to 8. */
static int put_record(struct writer *w, uint32_t type, const void *a, size_t al, const void *b, size_t bl) {
  static const char zeros[8];
  struct tg_rec_header h;
  memset(&h, 0, sizeof h);
  h.type = type;
  h.payload_len = al + bl;
  uint32_t c = tg_crc32c(0, a, al);
  if (bl) c = tg_crc32c(c, b, bl);
  h.payload_crc = c;
  h.header_crc = tg_crc32c(0, &h, 28);
  size_t pad = (8 - ((al + bl) & 7)) & 7;
  struct iovec iov[4] = {{&h, sizeof h}, {(void *)a, al}, {(void *)b, bl}, {(void *)zeros, pad}};
  w->nrec++;
  return write_all(w, iov, 4);
}

/* Does [s, e) meet a mapping of the parent's maps (the application's memory as captured)? */
static int meets_parent_mapping(uint64_t s, uint64_t e) {
  const char *maps = tg.parent_maps;
  long ml = tg.parent_maps_len;
  for (const char *l = maps; ml > 0 && l < maps + ml;) {
    const char *le = memchr(l, '\n', (size_t)(maps + ml - l));
    if (!le) le = maps + ml;
    struct tg_vma v;
    if (tg_parse_maps_line(l, le, &v) == 0 && v.start < e && s < v.end) return 1;
    l = le + 1;
  }
  return 0;
}

/* Memory of this child's own (buffers), never where the parent has a mapping. The child lacks the
 * mappings left out of the fork (MADV_DONTFORK: the hot mappings of adaptive tracking, copied
 * apart), and the kernel may place a new mapping in such a hole: a buffer there would stand for
 * the application's memory at that address (the mapping was then left out of the image). Such a
 * placement is kept reserved, unused, and another asked for. */
static void *child_alloc(size_t len) {
  for (int tries = 0; tries < 2 * TG_HOT_MAX + 8; tries++) {
    void *p = (void *)tg_sys6l(SYS_mmap, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if ((unsigned long)p > -4096UL) return NULL;
    if (!meets_parent_mapping((uint64_t)p, (uint64_t)p + len)) return p;
  }
  return NULL;
}

static int ends_with(const char *p, size_t n, const char *s) {
  size_t sl = strlen(s);
  return n >= sl && memcmp(p + n - sl, s, sl) == 0;
}

static int is_zero_page(const void *p) {
  const uint64_t *q = p;
  for (size_t i = 0; i < TG_PAGE / 8; i += 8)
    if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7]) return 0;
  return 1;
}

/* The agent's own memory, never part of an image. The kernel may merge one of these with an
 * adjacent application mapping of the same kind (anonymous, private, NORESERVE), so mappings are
 * cut around them rather than skipped whole. */
struct span { uint64_t s, e; };
static struct span owned[16];
static int nowned;
static void add_owned(const void *p, uint64_t len) {
  if (!p || !len || nowned >= 16) return;
  struct span x = {(uint64_t)p, (uint64_t)p + ((len + TG_PAGE - 1) & ~(TG_PAGE - 1))};
  int i = nowned++;
  while (i > 0 && owned[i - 1].s > x.s) { owned[i] = owned[i - 1]; i--; }
  owned[i] = x;
}
static void collect_owned(void) {
  nowned = 0;
  add_owned((void *)tg.child_stack, TG_CHILD_REGION);
  add_owned(tg_trk.tracked, tg_trk.tracked_cap * sizeof(struct tg_region));
  add_owned(tg_trk.dirty, tg_trk.dirty_cap * sizeof(struct tg_region));
  add_owned(tg_trk.fresh, tg_trk.fresh_cap * sizeof(struct tg_region));
  add_owned(tg_trk.prev, tg_trk.prev_len);
  add_owned(tg_trk.next, tg_trk.next_len);
  add_owned(tg_trk.hot_buf, tg_trk.hot_buf_len);
}
/* The pieces of [s, e) outside the agent's memory: returns how many (into out). */
static int app_pieces(uint64_t s, uint64_t e, struct span *out, int cap) {
  int n = 0;
  uint64_t cur = s;
  for (int i = 0; i < nowned && cur < e; i++) {
    if (owned[i].e <= cur || owned[i].s >= e) continue;
    if (owned[i].s > cur && n < cap) out[n++] = (struct span){cur, owned[i].s};
    if (owned[i].e > cur) cur = owned[i].e;
  }
  if (cur < e && n < cap) out[n++] = (struct span){cur, e};
  return n;
}

static int is_own(uint64_t s, uint64_t e) {
  if (s >= tg.child_stack && e <= tg.child_stack + TG_CHILD_REGION) return 1; /* stack, maps and fd buffers */
  if (tg_track_owns(s, e)) return 1;
  return 0;
}

static int too_large(const struct tg_vma *v, const char *path, uint64_t size, char *err, size_t errlen) {
  snprintf(err, errlen, "mapping %llx-%llx of %s is shared and writable and the file is %llu MiB: only files up to %llu MiB "
           "mapped this way are captured. Map it private or read-only, or keep the file under %llu MiB",
           (unsigned long long)v->start, (unsigned long long)v->end, path, (unsigned long long)(size >> 20),
           TG_SHARED_CONTENT_MAX >> 20, TG_SHARED_CONTENT_MAX >> 20);
  return -1;
}

/* A shared writable mapping of a deleted file: its contents (up to the file's size) are stored and
 * it comes back as shared memory. */
static int shared_content(const struct tg_vma *v, struct tg_rec_vma *r, const char *path, char *err, size_t errlen) {
  char mf[80];
  struct stat st;
  snprintf(mf, sizeof mf, "/proc/self/map_files/%llx-%llx", (unsigned long long)v->start, (unsigned long long)v->end);
  long e = tg_sys2(SYS_stat, mf, &st);
  if (e < 0) {
    snprintf(err, errlen, "mapping %llx-%llx of deleted file %s: stat %s: %s", (unsigned long long)v->start,
             (unsigned long long)v->end, path, mf, strerror((int)-e));
    return -1;
  }
  if ((uint64_t)st.st_size > TG_SHARED_CONTENT_MAX) return too_large(v, path, (uint64_t)st.st_size, err, errlen);
  r->id.size = (uint64_t)st.st_size;
  r->vflags |= TG_VF_CONTENT;
  return 0;
}

/* A System V segment's mapping (its inode is the segment's id): key, size, mode and owner go into
 * the record so that the restore makes the segment again (docs/format.md, VMA). One marked for
 * removal (SHM_DEST: nobody can shmget it) stays plain shared memory, as does one not listed. */
static void sysv_segment(const struct tg_vma *v, struct tg_rec_vma *r) {
  struct tg_sysv_shm s;
  if (tg_sysv_shm_find((int32_t)v->ino, &s) != 0 || (s.mode & 01000)) return;
  r->vflags |= TG_VF_SYSV;
  r->reserved = (uint32_t)s.key;
  r->id.size = s.size;
  r->id.mode = s.mode & 0777;
  r->id.mtime_ns = (uint64_t)s.uid << 32 | s.gid;
}

/* classify: the name a mapping's file still has when its path reads "(deleted)" (tg_vma_relinked),
 * the path its record then carries; relinked_len 0: the mapping's own path. */
static char relinked_path[4096];
static size_t relinked_len;

static int classify(const struct tg_vma *v, struct tg_rec_vma *r, char *err, size_t errlen) {
  memset(r, 0, sizeof *r);
  relinked_len = 0;
  r->start = v->start;
  r->end = v->end;
  r->pgoff = v->pgoff;
  r->prot = v->prot;
  if (tg_vma_path_is(v, "[vdso]") || tg_vma_path_is(v, "[vvar]") || tg_vma_path_is(v, "[vvar_vclock]")) { r->kind = TG_VMA_VDSO; return 0; }
  if (tg_vma_path_is(v, "[vsyscall]")) { r->kind = TG_VMA_VSYSCALL; return 0; }
  if (tg_vma_path_is(v, "[heap]")) r->vflags |= TG_VF_HEAP;
  if (tg_vma_path_is(v, "[stack]")) r->vflags |= TG_VF_STACK | TG_VF_GROWSDOWN;
  if (v->ino == 0) { r->kind = v->shared ? TG_VMA_ANON_SHARED : TG_VMA_ANON_PRIVATE; return 0; }
  /* the object behind shared memory (a shmem inode: MAP_SHARED|MAP_ANONYMOUS, memfd, a deleted
   * file, SysV): two processes of a tree that map the same one share it after a restore too */
  if (v->shared) {
    r->id.dev = ((uint64_t)v->devmaj << 32) | v->devmin;
    r->id.ino = v->ino;
  }
  /* file-backed */
  int deleted = ends_with(v->path, v->pathlen, " (deleted)");
  char path[4096];
  size_t pl = v->pathlen < sizeof path - 1 ? v->pathlen : sizeof path - 1;
  memcpy(path, v->path, pl);
  path[pl] = 0;
  if (deleted && tg_vma_relinked(v, relinked_path, sizeof relinked_path)) {
    /* its file under the name it has now: mapped from that file at restore, which the app's
     * files set rolls back (a named semaphore shared with processes that open it by name) */
    deleted = 0;
    relinked_len = strlen(relinked_path);
    memcpy(path, relinked_path, relinked_len + 1);
  }
  struct stat st;
  if (!deleted && (path[0] != '/' || tg_sys2(SYS_stat, path, &st) != 0 || st.st_ino != v->ino)) deleted = 1;
  if (deleted) {
    /* the file is gone or replaced: keep the content itself */
    r->vflags |= TG_VF_DELETED;
    if (v->shared && (v->prot & 2) && strncmp(path, "/memfd:", 7) != 0 && strncmp(path, "/dev/zero", 9) != 0 &&
        strncmp(path, "/SYSV", 5) != 0 && shared_content(v, r, path, err, errlen) != 0)
      return -1;
    r->kind = v->shared ? TG_VMA_ANON_SHARED : TG_VMA_ANON_PRIVATE;
    if (v->shared && strncmp(path, "/SYSV", 5) == 0) sysv_segment(v, r);
    return 0;
  }
  r->kind = v->shared ? TG_VMA_FILE_SHARED : TG_VMA_FILE_PRIVATE;
  /* shared and writable: the contents go into the image (filestate.c refused files too large) */
  if (v->shared && (v->prot & 2) && S_ISREG(st.st_mode)) {
    if ((uint64_t)st.st_size > TG_SHARED_CONTENT_MAX) return too_large(v, path, (uint64_t)st.st_size, err, errlen);
    r->vflags |= TG_VF_CONTENT;
  }
  r->id.dev = st.st_dev;
  r->id.ino = st.st_ino;
  r->id.size = (uint64_t)st.st_size;
  r->id.mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
  r->id.mode = st.st_mode;
  return 0;
}

/* Page-selection rules of docs/format.md ("Contents" under VMA, and "Incremental images"). */
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_FILE (1ull << 61)

/* 64-bit page hash for the hash tracking mode: two multiply-rotate lanes over the page's words.
 * Detects changes (not adversarial collisions); a miss needs a 2^-64 coincidence. */
static uint64_t page_hash(const uint64_t *q) {
  uint64_t a = 0x9E3779B97F4A7C15ull, b = 0xC2B2AE3D27D4EB4Full;
  for (size_t i = 0; i < TG_PAGE / 8; i += 2) {
    a = ((a ^ q[i]) * 0xff51afd7ed558ccdull);
    a = (a << 31) | (a >> 33);
    b = ((b ^ q[i + 1]) * 0xc4ceb9fe1a85ec53ull);
    b = (b << 29) | (b >> 35);
  }
  a ^= b * 0x9E3779B97F4A7C15ull;
  return a ^ (a >> 29);
}

/* Runs of pages to store, and runs to clear, written as PAGES / PAGES_CLEAR records. */
struct runs {
  struct writer *w;
  uint64_t data_start, data_len, clear_start, clear_len;
  uint64_t stored;
};

static int flush_data(struct runs *r) {
  if (!r->data_len) return 0;
  struct tg_rec_pages ph = {r->data_start, r->data_len};
  /* shared writable file contents come from the copy the parent made while parked */
  /* (and hot mappings from the manager's copy: track.c, adaptive tracking) */
  const void *src = tg_shared_copy(ph.addr);
  if (!src) src = tg_track_hot_copy(ph.addr);
  int e = put_record(r->w, TG_REC_PAGES, &ph, sizeof ph, src ? src : (void *)ph.addr, r->data_len * TG_PAGE);
  r->w->pages += r->data_len;
  r->data_len = 0;
  return e;
}
static int flush_clear(struct runs *r) {
  if (!r->clear_len) return 0;
  struct tg_rec_pages ph = {r->clear_start, r->clear_len};
  r->clear_len = 0;
  return put_record(r->w, TG_REC_PAGES_CLEAR, &ph, sizeof ph, NULL, 0);
}
static int add_data(struct runs *r, uint64_t addr) {
  if (r->data_len && (addr != r->data_start + r->data_len * TG_PAGE || r->data_len == TG_PAGES_PER_RECORD))
    if (flush_data(r) != 0) return -1;
  if (!r->data_len) r->data_start = addr;
  r->data_len++;
  return 0;
}
static int add_clear(struct runs *r, uint64_t addr, uint64_t n) {
  if (r->clear_len && addr != r->clear_start + r->clear_len * TG_PAGE)
    if (flush_clear(r) != 0) return -1;
  if (!r->clear_len) r->clear_start = addr;
  r->clear_len += n;
  return 0;
}

/* hash mode: the previous table, walked in address order with the pages */
static uint64_t prev_i;
static int hash_clear_before(struct runs *rr, uint64_t addr) {
  struct tg_hash_table *pt = tg_trk.prev;
  while (pt && prev_i < pt->count && pt->e[prev_i].addr < addr) {
    if (add_clear(rr, pt->e[prev_i].addr, 1) != 0) return -1;
    prev_i++;
  }
  return 0;
}

/* Is [s,e) all in the copy of one hot mapping (track.c, adaptive tracking), which this child does
 * not map? */
static int hot_covers(uint64_t s, uint64_t e) {
  const char *hc = tg_track_hot_copy(s);
  return hc && tg_track_hot_copy(e - TG_PAGE) == hc + (e - TG_PAGE - s);
}

/* Is [s,e) a mapping the tracker saw as fresh (captured whole this time)? */
static int is_fresh(uint64_t s, uint64_t e) {
  uint64_t lo = tg_regions_first_after(tg_trk.fresh, tg_trk.nfresh, s);
  return lo < tg_trk.nfresh && tg_trk.fresh[lo].start <= s && tg_trk.fresh[lo].end >= e;
}

/* Is page [a, a+4K) in the dirty list? (dirty is sorted; d is a moving cursor) */
static int is_dirty(uint64_t a, uint64_t *d) {
  while (*d < tg_trk.ndirty && tg_trk.dirty[*d].end <= a) (*d)++;
  return *d < tg_trk.ndirty && tg_trk.dirty[*d].start <= a;
}

/* One page of a VMA, visited in address order: stored, cleared (incremental), or in hash mode
 * compared with the previous table. take: the page holds data of its own (present or swapped,
 * not the file's page); it must be readable. */
static int visit_page(struct runs *rr, uint64_t a, int take, int inc, int whole, int hash, int content) {
  /* a shared writable file mapping's page is read from the copy the parent made while parked */
  const void *pa = content && tg_shared_copy(a) ? tg_shared_copy(a) : (const void *)a;
  if (!content && tg_trk.nhot && tg_track_hot_copy(a)) pa = tg_track_hot_copy(a);
  if (take && is_zero_page(pa)) take = 0;
  if (hash) {
    if (hash_clear_before(rr, a) != 0) return -1;
    if (!take) return 0;
    uint64_t h = page_hash((const uint64_t *)pa);
    struct tg_hash_table *nt = tg_trk.next, *pt = tg_trk.prev;
    if (nt->count < nt->cap) nt->e[nt->count++] = (struct tg_page_hash){a, h};
    int same = inc && pt && prev_i < pt->count && pt->e[prev_i].addr == a && pt->e[prev_i].hash == h;
    if (inc && pt && prev_i < pt->count && pt->e[prev_i].addr == a) prev_i++;
    if (same) return 0;
    tg_trk.pages_written++;
    return add_data(rr, a);
  }
  if (take) return add_data(rr, a);
  /* written, but now zero (MADV_DONTNEED) or back to the file's page */
  if (inc && !whole) return add_clear(rr, a, 1);
  return 0;
}

static int make_readable(const struct tg_rec_vma *r, int *readable, char *err, size_t errlen) {
  if (*readable) return 0;
  long e = tg_sys3(SYS_mprotect, r->start, r->end - r->start, PROT_READ);
  if (e < 0) { snprintf(err, errlen, "mprotect %llx: %s", (unsigned long long)r->start, strerror((int)-e)); return -1; }
  *readable = 1;
  return 0;
}

/* Private mappings: PAGEMAP_SCAN lists the present and swapped ranges, so a large reservation with
 * few pages (a JVM heap, PROT_NONE guard areas) costs what its pages cost. Returns 0, -1 with err,
 * or 1 if the kernel has no PAGEMAP_SCAN (the caller reads /proc/self/pagemap instead). */
static int scan_private(struct runs *rr, const struct tg_rec_vma *r, int pagemap_fd, struct tg_region *reg, uint64_t reg_cap,
                        uint64_t *dcur, int inc, int whole, int hash, char *err, size_t errlen) {
  int readable = (r->prot & 1) != 0, anon = r->kind == TG_VMA_ANON_PRIVATE;
  for (uint64_t s = r->start; s < r->end;) {
    struct tg_pm_scan_arg q = {sizeof q, 0, s, r->end, 0, (uint64_t)reg, reg_cap, 0, 0, 0,
                               TG_PAGE_IS_PRESENT | TG_PAGE_IS_SWAPPED, TG_PAGE_IS_PRESENT | TG_PAGE_IS_SWAPPED | TG_PAGE_IS_FILE};
    long n = tg_sys3(SYS_ioctl, pagemap_fd, TG_PAGEMAP_SCAN, &q);
    if (n == -EINTR) continue;
    if (n < 0 && s == r->start && (n == -ENOTTY || n == -EINVAL)) return 1;
    if (n < 0) { snprintf(err, errlen, "PAGEMAP_SCAN %llx: %s", (unsigned long long)s, strerror((int)-n)); return -1; }
    uint64_t cend = q.walk_end > s && q.walk_end <= r->end ? q.walk_end : r->end;
    /* The kernel (seen on 6.18 with uffd-wp markers) may report a walk_end short of the ranges it
     * returned: the walk went at least to the last range's end. Going on from walk_end would visit
     * those pages twice, out of address order. */
    if (n > 0 && reg[n - 1].end > cend && reg[n - 1].end <= r->end) cend = reg[n - 1].end;
#define TAKE(c) (anon || ((c) & TG_PAGE_IS_SWAPPED) || !((c) & TG_PAGE_IS_FILE))
    if (whole) {
      for (long k = 0; k < n; k++)
        for (uint64_t a = reg[k].start; a < reg[k].end; a += TG_PAGE) {
          int take = TAKE(reg[k].categories);
          if (take && make_readable(r, &readable, err, errlen) != 0) return -1;
          if (visit_page(rr, a, take, inc, whole, hash, 0) != 0) goto werr;
        }
    } else {
      /* written pages of [s, cend), each looked up in the present ranges */
      while (*dcur < tg_trk.ndirty && tg_trk.dirty[*dcur].end <= s) (*dcur)++;
      long k = 0;
      for (uint64_t d = *dcur; d < tg_trk.ndirty && tg_trk.dirty[d].start < cend; d++) {
        uint64_t a0 = tg_trk.dirty[d].start > s ? tg_trk.dirty[d].start : s;
        uint64_t a1 = tg_trk.dirty[d].end < cend ? tg_trk.dirty[d].end : cend;
        for (uint64_t a = a0; a < a1; a += TG_PAGE) {
          while (k < n && reg[k].end <= a) k++;
          int take = k < n && reg[k].start <= a && TAKE(reg[k].categories);
          if (take && make_readable(r, &readable, err, errlen) != 0) return -1;
          if (visit_page(rr, a, take, inc, whole, hash, 0) != 0) goto werr;
        }
      }
    }
#undef TAKE
    s = cend;
  }
  return 0;
werr:
  snprintf(err, errlen, "writing the image: %s", strerror(rr->w->err ? rr->w->err : EIO));
  return -1;
}

/* A hot mapping's non-zero pages, read from the tracker's memfd with pread into one buffer (the
 * first touch of each page of a mapping costs this child a fault; a read into a buffer it already
 * touched does not). 0, -1 with err, or 1 without a buffer (the caller reads the shared mapping). */
static int hot_store(struct runs *rr, const struct tg_rec_vma *r, char *err, size_t errlen) {
  static char *scratch;
  if (!scratch) scratch = child_alloc((size_t)TG_PAGES_PER_RECORD * TG_PAGE);
  if (!scratch || tg_trk.hot_fd < 0) return 1;
  if (flush_data(rr) != 0) goto werr;
  uint64_t off = (uint64_t)tg_track_hot_copy(r->start) - (uint64_t)tg_trk.hot_buf;
  for (uint64_t a = r->start; a < r->end;) {
    uint64_t n = (r->end - a) / TG_PAGE < TG_PAGES_PER_RECORD ? (r->end - a) / TG_PAGE : TG_PAGES_PER_RECORD;
    for (uint64_t got = 0; got < n * TG_PAGE;) {
      long e = tg_sys4(SYS_pread64, tg_trk.hot_fd, scratch + got, n * TG_PAGE - got, off + got);
      if (e == -EINTR) continue;
      if (e <= 0) {
        snprintf(err, errlen, "reading the copy of mapping %llx: %s", (unsigned long long)r->start, e ? strerror((int)-e) : "short read");
        return -1;
      }
      got += (uint64_t)e;
    }
    for (uint64_t i = 0; i < n;) {
      if (is_zero_page(scratch + i * TG_PAGE)) { i++; continue; }
      uint64_t j = i;
      while (j < n && !is_zero_page(scratch + j * TG_PAGE)) j++;
      struct tg_rec_pages ph = {a + i * TG_PAGE, j - i};
      if (put_record(rr->w, TG_REC_PAGES, &ph, sizeof ph, scratch + i * TG_PAGE, (j - i) * TG_PAGE) != 0) goto werr;
      rr->w->pages += j - i;
      i = j;
    }
    a += n * TG_PAGE;
    off += n * TG_PAGE;
  }
  return 0;
werr:
  snprintf(err, errlen, "writing the image: %s", strerror(rr->w->err ? rr->w->err : EIO));
  return -1;
}

/* Bytes of hot mappings written into this image: all of the copies, checked at the end. */
static uint64_t hot_written;

static int dump_vma_pages(struct runs *rr, const struct tg_rec_vma *r, int pagemap_fd, uint64_t *pm, size_t pm_cap,
                          unsigned char *mc, uint64_t *dcur, char *err, size_t errlen) {
  int content = (r->vflags & TG_VF_CONTENT) != 0; /* shared writable file mapping: every page up to the file's end */
  if (r->kind == TG_VMA_VDSO || r->kind == TG_VMA_VSYSCALL || (r->kind == TG_VMA_FILE_SHARED && !content)) return 0;
  /* a PAGES record never spans two VMAs, even where they are adjacent */
  if (flush_data(rr) != 0) goto werr;
  int all = (r->vflags & TG_VF_DELETED) && r->kind == TG_VMA_ANON_PRIVATE;
  int inc = tg_trk.incremental, hash = tg_trk.mode == TG_TRACK_HASH;
  /* uffd incremental: fresh mappings are captured whole (after clearing whatever an earlier image
   * had there); tracked ones only where written; shared file contents are never tracked */
  int whole = !inc || hash || content || is_fresh(r->start, r->end);
  if (inc && !hash && whole && add_clear(rr, r->start, (r->end - r->start) / TG_PAGE) != 0) goto werr;
  if (hot_covers(r->start, r->end)) {
    /* a hot mapping (track.c, adaptive tracking): not mapped in this child; stored whole (the
     * tracker listed it as fresh) from the copy the manager made while the threads were parked */
    if (inc && !hash && !whole && add_clear(rr, r->start, (r->end - r->start) / TG_PAGE) != 0) goto werr;
    hot_written += r->end - r->start;
    int e = hot_store(rr, r, err, errlen);
    if (e <= 0) return e;
    for (uint64_t a = r->start; a < r->end; a += TG_PAGE) /* no scratch buffer: through the shared mapping */
      if (visit_page(rr, a, 1, inc, 1, hash, 0) != 0) goto werr;
    return 0;
  }
  static int no_scan; /* this kernel has no PAGEMAP_SCAN */
  if (!all && !no_scan && (r->kind == TG_VMA_ANON_PRIVATE || r->kind == TG_VMA_FILE_PRIVATE)) {
    int e = scan_private(rr, r, pagemap_fd, (struct tg_region *)pm, pm_cap * 8 / sizeof(struct tg_region), dcur, inc, whole, hash, err, errlen);
    if (e <= 0) return e;
    no_scan = 1;
  }
  if (!(r->prot & 1)) {
    long e = tg_sys3(SYS_mprotect, r->start, r->end - r->start, PROT_READ);
    if (e < 0) { snprintf(err, errlen, "mprotect %llx: %s", (unsigned long long)r->start, strerror((int)-e)); return -1; }
  }
  uint64_t npages = (r->end - r->start) / TG_PAGE;
  for (uint64_t base = 0; base < npages; base += pm_cap) {
    uint64_t cnt = npages - base < pm_cap ? npages - base : pm_cap;
    uint64_t addr0 = r->start + base * TG_PAGE;
    if (content) {
      /* no page table to ask: pages past the file's end cannot be read (SIGBUS) */
    } else if (r->kind == TG_VMA_ANON_SHARED) {
      long e = tg_sys3(SYS_mincore, addr0, cnt * TG_PAGE, mc);
      if (e < 0) { snprintf(err, errlen, "mincore %llx: %s", (unsigned long long)addr0, strerror((int)-e)); return -1; }
    } else if (!all) {
      long want = (long)(cnt * 8), got = 0;
      while (got < want) {
        long e = tg_sys4(SYS_pread64, pagemap_fd, (char *)pm + got, want - got, (addr0 / TG_PAGE) * 8 + got);
        if (e == -EINTR) continue;
        if (e <= 0) { snprintf(err, errlen, "read pagemap: %s", e ? strerror((int)-e) : "short read"); return -1; }
        got += e;
      }
    }
    for (uint64_t i = 0; i < cnt; i++) {
      uint64_t a = addr0 + i * TG_PAGE;
      if (!whole && !is_dirty(a, dcur)) continue;
      int take;
      if (content) take = r->pgoff + (a - r->start) < r->id.size;
      else if (all) take = 1;
      else if (r->kind == TG_VMA_ANON_SHARED) take = mc[i] & 1;
      else if (r->kind == TG_VMA_ANON_PRIVATE) take = (pm[i] & (PM_PRESENT | PM_SWAPPED)) != 0;
      else take = (pm[i] & PM_SWAPPED) || ((pm[i] & PM_PRESENT) && !(pm[i] & PM_FILE));
      if (visit_page(rr, a, take, inc, whole, hash, content) != 0) goto werr;
    }
  }
  return 0;
werr:
  snprintf(err, errlen, "writing the image: %s", strerror(rr->w->err ? rr->w->err : EIO));
  return -1;
}

/* /proc/self/stat fields (1-based) 26.. as numbers. */
static void stat_fields(uint64_t *out /* [53] */) {
  char buf[2048];
  memset(out, 0, 53 * sizeof *out);
  if (tg_read_file("/proc/self/stat", buf, sizeof buf) <= 0) return;
  char *p = strrchr(buf, ')');
  if (!p) return;
  p += 2;
  for (int i = 3; i <= 52 && *p; i++) {
    out[i] = strtoull(p, NULL, 10);
    p = strchr(p, ' ');
    if (!p) break;
    p++;
  }
}

static int put_proc(struct writer *w, const char *maps, size_t mapslen) {
  struct tg_rec_proc pr;
  memset(&pr, 0, sizeof pr);
  pr.pid = (uint32_t)tg.pid;
  pr.ppid = (uint32_t)tg.ppid;
  pr.pgid = (uint32_t)tg_sys1(SYS_getpgid, 0);
  pr.sid = (uint32_t)tg_sys1(SYS_getsid, 0);
  long um = tg_sys1(SYS_umask, 022);
  tg_sys1(SYS_umask, um);
  pr.umask = (uint32_t)um;
  pr.nthreads = (uint32_t)tg.nslots;
  for (const char *l = maps; l < maps + mapslen;) {
    const char *e = memchr(l, '\n', (size_t)(maps + mapslen - l));
    if (!e) e = maps + mapslen;
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0) {
      if (tg_vma_path_is(&v, "[vvar]") && !pr.vvar_addr) pr.vvar_addr = v.start;
      if (tg_vma_path_is(&v, "[vdso]")) pr.vdso_addr = v.start;
    }
    l = e + 1;
  }
  if (!pr.vvar_addr) pr.vvar_addr = pr.vdso_addr;
  pr.restart_info_addr = (uint64_t)&tg_restart;
  pr.trampoline_addr = (uint64_t)&tg_resume_trampoline;
  pr.flags = tg_trk.mode == TG_TRACK_UFFD ? TG_PROC_TRACK_UFFD : 0; /* the restorer arms tracking again (track.c) */
  uint64_t f[53];
  stat_fields(f);
  pr.mm[MM_START_CODE] = f[26];
  pr.mm[MM_END_CODE] = f[27];
  pr.mm[MM_START_STACK] = f[28];
  pr.mm[MM_START_DATA] = f[45];
  pr.mm[MM_END_DATA] = f[46];
  pr.mm[MM_START_BRK] = f[47];
  pr.mm[MM_ARG_START] = f[48];
  pr.mm[MM_ARG_END] = f[49];
  pr.mm[MM_ENV_START] = f[50];
  pr.mm[MM_ENV_END] = f[51];
  pr.mm[MM_BRK] = (uint64_t)tg_sys1(SYS_brk, 0);
  for (int i = 0; i < tg.nslots && i < TG_MAX_THREADS; i++)
    if (tg.slots[i].is_manager) pr.shared_sigpending = tg.slots[i].shared_sigpending;
  /* the agent's own park signal is never pending for the application */
  pr.shared_sigpending &= ~(1ull << (tg.sig - 1));
  long n = tg_read_file("/proc/self/auxv", (char *)pr.auxv, sizeof pr.auxv);
  pr.auxv_len = n > 0 ? (uint32_t)n : 0;
  pr.monotonic_ns = tg_now_ns(CLOCK_MONOTONIC);
  return put_record(w, TG_REC_PROC, &pr, sizeof pr, NULL, 0);
}

static int put_path_record(struct writer *w, uint32_t type, const char *link, int with_id) {
  char path[4096];
  long n = tg_sys4(SYS_readlink, link, path, sizeof path - 1, 0);
  if (n < 0) return -1;
  path[n] = 0;
  if (!with_id) return put_record(w, type, path, (size_t)n, NULL, 0);
  struct tg_file_id id;
  memset(&id, 0, sizeof id);
  struct stat st;
  if (tg_sys2(SYS_stat, link, &st) == 0) {
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    id.size = (uint64_t)st.st_size;
    id.mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    id.mode = st.st_mode;
  }
  return put_record(w, type, &id, sizeof id, path, (size_t)n);
}

/* resource.h's emit: one record through the writer; 0 or the errno that stopped it */
static int emit_record(void *ctx, uint32_t type, const void *a, size_t al, const void *b, size_t bl) {
  struct writer *w = ctx;
  return put_record(w, type, a, al, b, bl) == 0 ? 0 : (w->err ? w->err : EIO);
}

TG_HIDDEN void tg_capture_fds(char *buf, uint64_t cap) {
  struct writer w = {-1, 0, 0, 0, 0, buf, cap};
  tg.pid_self = (int)tg_sys0(SYS_getpid);
  tg.fds_err[0] = 0;
  if (tg_walk_fds(emit_record, &w, tg.fds_err, sizeof tg.fds_err) != 0 && !tg.fds_err[0])
    snprintf(tg.fds_err, sizeof tg.fds_err, "recording the fds: %s", strerror(w.err ? w.err : EIO));
  if (!tg.fds_err[0])
    tg_put_file_states(buf, w.off, tg.parent_maps, tg.parent_maps_len, emit_record, &w, tg.fds_err, sizeof tg.fds_err);
  tg.fds_len = w.off;
  tg.fds_nrec = w.nrec;
}

TG_HIDDEN int tg_capture_image(char *err, size_t errlen, uint64_t *bytes, uint64_t *pages) {
  struct writer w = {tg.img_fd, 0, 0, 0, 0, NULL, 0};
  tg.pagemap_fd = -1;
  collect_owned();
  tg.pid_self = (int)tg_sys0(SYS_getpid);
  /* The VMA list is the parent's (taken with every thread parked); the child checks it has each of
   * those mappings too (a MADV_DONTFORK mapping the agent did not know of would be missing). */
  const char *maps = tg.parent_maps;
  long ml = tg.parent_maps_len;
  if (ml <= 0 || ml >= (long)(8u << 20) - 1) { snprintf(err, errlen, "cannot read /proc/self/maps"); return -1; }
  if (tg_shared_copy_missed()) { snprintf(err, errlen, "%s", tg_shared_copy_missed()); return -1; }
  size_t maps_cap = 8u << 20;
  char *cmaps = child_alloc(maps_cap);
  size_t pm_cap = 65536;
  uint64_t *pm = child_alloc(pm_cap * 8);
  unsigned char *mc = child_alloc(pm_cap);
  if (!cmaps || !pm || !mc) { snprintf(err, errlen, "out of memory in the snapshot process"); return -1; }
  long cml = tg_read_file("/proc/self/maps", cmaps, maps_cap);
  if (cml < 0) { snprintf(err, errlen, "cannot read /proc/self/maps"); return -1; }
  int missing = 0;
  for (const char *l = maps, *c = cmaps; l < maps + ml;) {
    const char *e = memchr(l, '\n', (size_t)(maps + ml - l));
    if (!e) e = maps + ml;
    struct tg_vma v, cv;
    if (tg_parse_maps_line(l, e, &v) == 0 && !is_own(v.start, v.end) && !tg_vma_path_is(&v, "[vsyscall]") &&
        !hot_covers(v.start, v.end)) {
      /* covered by the child's mappings (their boundaries may differ: one child mapping can span
       * two of the parent's, or the reverse); c stays at the first child line ending after v.start */
      int found = 0;
      uint64_t need = v.start;
      for (const char *x = c; x < cmaps + cml;) {
        const char *xe = memchr(x, '\n', (size_t)(cmaps + cml - x));
        if (!xe) xe = cmaps + cml;
        if (tg_parse_maps_line(x, xe, &cv) != 0 || cv.end <= v.start) {
          if (x == c) c = xe + 1;
          x = xe + 1;
          continue;
        }
        if (cv.start > need) break;
        if (cv.end > need) need = cv.end;
        if (need >= v.end) { found = 1; break; }
        x = xe + 1;
      }
      if (!found) {
        /* not copied into the snapshot: marked MADV_DONTFORK other than through libc's madvise
         * (e.g. moved by mremap after being marked). The parent learns the range and retries. */
        char line[80];
        int n = snprintf(line, sizeof line, "DONTFORK %llx %llx\n", (unsigned long long)v.start, (unsigned long long)v.end);
        tg_sys3(SYS_write, tg.err_wr, line, n);
        missing++;
      }
    }
    l = e + 1;
  }

  if (missing) {
    snprintf(err, errlen, "%d mapping(s) marked MADV_DONTFORK were not in the snapshot", missing);
    return -1;
  }

  struct tg_file_header fh;
  memset(&fh, 0, sizeof fh);
  memcpy(fh.magic, TG_IMAGE_MAGIC, 8);
  fh.version = TG_IMAGE_VERSION;
  fh.header_size = sizeof fh;
  fh.created_ns = tg_now_ns(CLOCK_REALTIME);
  fh.pid = (uint32_t)tg.pid;
  fh.seq = tg.seq;
  fh.flags = tg_trk.incremental ? 1 : 0;
  fh.parent_seq = tg_trk.incremental ? tg.parent_seq : 0;
  fh.page_size = TG_PAGE;
  fh.header_crc = tg_crc32c(0, &fh, 60);
  struct iovec iov = {&fh, sizeof fh};
  if (write_all(&w, &iov, 1) != 0) goto werr;

  if (put_proc(&w, maps, (size_t)ml) != 0) goto werr;
  if (put_path_record(&w, TG_REC_CWD, "/proc/self/cwd", 0) != 0) { snprintf(err, errlen, "cannot read the working directory"); return -1; }
  if (put_path_record(&w, TG_REC_EXE, "/proc/self/exe", 1) != 0) { snprintf(err, errlen, "cannot read /proc/self/exe"); return -1; }
  struct tg_rlimit rl[TG_NRLIMITS];
  for (int i = 0; i < TG_NRLIMITS; i++) {
    struct rlimit r;
    if (tg_sys4(SYS_prlimit64, 0, i, NULL, &r) != 0) r.rlim_cur = r.rlim_max = RLIM_INFINITY;
    rl[i].cur = r.rlim_cur;
    rl[i].max = r.rlim_max;
  }
  if (put_record(&w, TG_REC_RLIMITS, rl, sizeof rl, NULL, 0) != 0) goto werr;
  struct tg_ksigaction ka[64];
  memset(ka, 0, sizeof ka);
  for (int s = 1; s <= 64; s++) tg_sys4(SYS_rt_sigaction, s, NULL, &ka[s - 1], 8);
  if (put_record(&w, TG_REC_SIGACTIONS, ka, sizeof ka, NULL, 0) != 0) goto werr;

  /* VMA records, then threads and fds, then page data */
  struct runs rr = {&w, 0, 0, 0, 0, 0};
  uint64_t dcur = 0;
  prev_i = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (const char *l = maps; l < maps + ml;) {
      const char *e = memchr(l, '\n', (size_t)(maps + ml - l));
      if (!e) e = maps + ml;
      struct tg_vma v;
      struct span pieces[17];
      int np = tg_parse_maps_line(l, e, &v) == 0 ? app_pieces(v.start, v.end, pieces, 17) : 0;
      for (int k = 0; k < np; k++) {
        struct tg_vma pv = v;
        pv.start = pieces[k].s;
        pv.end = pieces[k].e;
        if (v.ino) pv.pgoff = v.pgoff + (pv.start - v.start);
        if (is_own(pv.start, pv.end)) continue;
        struct tg_rec_vma r;
        if (classify(&pv, &r, err, errlen) != 0) return -1;
        if (pass == 0) {
          if (put_record(&w, TG_REC_VMA, &r, sizeof r, relinked_len ? relinked_path : v.path, relinked_len ? relinked_len : v.pathlen) != 0) goto werr;
        } else if (dump_vma_pages(&rr, &r, tg.pagemap_fd, pm, pm_cap, mc, &dcur, err, errlen) != 0) {
          return -1;
        }
      }
      l = e + 1;
    }
    if (pass == 0) {
      for (int i = 0; i < tg.nslots && i < TG_MAX_THREADS; i++) {
        struct tg_slot *s = &tg.slots[i];
        struct tg_rec_thread t;
        memset(&t, 0, sizeof t);
        t.tid = (uint32_t)s->tid;
        t.flags = s->is_manager ? TG_THREAD_MANAGER : 0;
        t.uc_addr = (uint64_t)s->uc;
        t.fs_base = s->fs_base;
        t.gs_base = s->gs_base;
        t.clear_child_tid = s->clear_child_tid;
        t.robust_head = s->robust_head;
        t.robust_len = s->robust_len;
        t.rseq_addr = s->rseq_addr;
        t.rseq_len = s->rseq_len;
        t.rseq_sig = s->rseq_sig;
        t.sigpending = s->sigpending & ~(1ull << (tg.sig - 1));
        t.rip = (uint64_t)s->uc->uc_mcontext.gregs[REG_RIP];
        t.rsp = (uint64_t)s->uc->uc_mcontext.gregs[REG_RSP];
        memcpy(t.comm, s->comm, sizeof t.comm);
        if (put_record(&w, TG_REC_THREAD, &t, sizeof t, NULL, 0) != 0) goto werr;
        if (put_record(&w, TG_REC_THREAD_ATTRS, &s->attrs, sizeof s->attrs, NULL, 0) != 0) goto werr;
      }
      /* fd records were taken by the parent while the threads were parked: file offsets, pipe
       * contents and eventfd counters are shared with the running application */
      if (tg.fds_err[0]) { snprintf(err, errlen, "%s", tg.fds_err); return -1; }
      struct iovec fiov = {tg.fds_buf, tg.fds_len};
      if (tg.fds_len && write_all(&w, &fiov, 1) != 0) goto werr;
      w.nrec += tg.fds_nrec;
      {
        const struct tg_rec_timers *th;
        const struct tg_timer *tt;
        const char *terr = tg_captured_timers(&th, &tt);
        if (terr) { snprintf(err, errlen, "%s", terr); return -1; }
        if (put_record(&w, TG_REC_TIMERS, th, sizeof *th, tt, th->ntimers * sizeof *tt) != 0) goto werr;
        if (put_record(&w, TG_REC_ATTRS, tg_captured_attrs(), sizeof(struct tg_rec_attrs), NULL, 0) != 0) goto werr;
        if (tg_captured_creds() && put_record(&w, TG_REC_CREDS, tg_captured_creds(), sizeof(struct tg_rec_creds), NULL, 0) != 0) goto werr;
      }
      struct tg_rec_tracking tr = {tg_trk.mode == TG_TRACK_OFF ? TG_TRACK_NONE : (uint32_t)tg_trk.mode, 0, tg_trk.pages_scanned, tg_trk.pages_written, tg_trk.nfresh};
      if (put_record(&w, TG_REC_TRACKING, &tr, sizeof tr, NULL, 0) != 0) goto werr;
    }
    if (pass == 0) {
      tg.pagemap_fd = (int)tg_sys3(SYS_open, "/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
      if (tg.pagemap_fd < 0) { snprintf(err, errlen, "cannot open /proc/self/pagemap: %s", strerror(-tg.pagemap_fd)); return -1; }
    }
  }
  /* every copy made while the threads were parked stands for a mapping of the application: one
   * not written would leave the image a checkpoint behind there, or without the mapping */
  uint64_t hot_copied = 0;
  for (uint32_t i = 0; i < tg_trk.nhot; i++)
    if (tg_trk.hot[i].copy) hot_copied += tg_trk.hot[i].end - tg_trk.hot[i].start;
  if (hot_written != hot_copied) {
    snprintf(err, errlen, "internal error: %llu bytes of mappings copied whole by adaptive tracking, %llu written into the image",
             (unsigned long long)hot_copied, (unsigned long long)hot_written);
    return -1;
  }
  if (flush_data(&rr) != 0 || (tg_trk.mode == TG_TRACK_HASH && tg_trk.incremental && hash_clear_before(&rr, ~0ull) != 0) ||
      flush_clear(&rr) != 0)
    goto werr;
  if (tg_trk.mode == TG_TRACK_HASH && tg_trk.next && tg_trk.next->count >= tg_trk.next->cap) {
    snprintf(err, errlen, "page hash table overflow");
    return -1;
  }
  struct tg_rec_end end = {w.nrec, w.pages, 0};
  end.file_size = w.off + sizeof(struct tg_rec_header) + sizeof end;
  if (put_record(&w, TG_REC_END, &end, sizeof end, NULL, 0) != 0) goto werr;
  struct stat fst;
  long e = tg_sys2(SYS_fstat, w.fd, &fst) == 0 && !S_ISREG(fst.st_mode) ? 0 : tg_sys1(SYS_fsync, w.fd);
  if (e < 0) { snprintf(err, errlen, "fsync of the image: %s", strerror((int)-e)); return -1; }
  *bytes = w.off;
  *pages = w.pages;
  return 0;
werr:
  snprintf(err, errlen, "writing the image: %s", strerror(w.err ? w.err : EIO));
  return -1;
}
