/* Dirty-page tracking: see track.h. Runs in the manager's park handler (all threads parked), so it
 * uses raw syscalls and preallocated memory only. */
#include "track.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "../common/sys.h"
#include "agent.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

TG_HIDDEN struct tg_track tg_trk = {.mode = TG_TRACK_NONE, .requested = TG_TRACK_UFFD, .uffd = -1, .pagemap = -1, .hot_fd = -1};

#define TRACKED_CAP (1u << 20)
#define DIRTY_CAP (4u << 20)
#define FRESH_CAP (1u << 20)

static void *anon(uint64_t len, int shared) {
  long p = tg_sys6l(SYS_mmap, 0, len, PROT_READ | PROT_WRITE,
                    (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return (unsigned long)p > -4096UL ? NULL : (void *)p;
}

static int arrays(void) {
  if (!tg_trk.tracked) { tg_trk.tracked = anon(TRACKED_CAP * sizeof(struct tg_region), 0); tg_trk.tracked_cap = TRACKED_CAP; }
  if (!tg_trk.dirty) { tg_trk.dirty = anon(DIRTY_CAP * sizeof(struct tg_region), 0); tg_trk.dirty_cap = DIRTY_CAP; }
  if (!tg_trk.fresh) { tg_trk.fresh = anon(FRESH_CAP * sizeof(struct tg_region), 0); tg_trk.fresh_cap = FRESH_CAP; }
  return tg_trk.tracked && tg_trk.dirty && tg_trk.fresh ? 0 : -1;
}

TG_HIDDEN int tg_track_owns(uint64_t s, uint64_t e) {
  struct { void *p; uint64_t len; } r[] = {
      {tg_trk.tracked, TRACKED_CAP * sizeof(struct tg_region)},
      {tg_trk.dirty, DIRTY_CAP * sizeof(struct tg_region)},
      {tg_trk.fresh, FRESH_CAP * sizeof(struct tg_region)},
      {tg_trk.prev, tg_trk.prev_len},
      {tg_trk.next, tg_trk.next_len},
      {tg_trk.hot_buf, tg_trk.hot_buf_len},
  };
  for (size_t i = 0; i < sizeof r / sizeof *r; i++)
    if (r[i].p && s >= (uint64_t)r[i].p && e <= (uint64_t)r[i].p + r[i].len) return 1;
  return 0;
}

TG_HIDDEN int tg_track_is_hidden_fd(int fd) {
  /* (track_uffd: armed by the restorer, until the manager adopts it) */
  return fd >= 0 && (fd == tg_trk.uffd || fd == tg_trk.pagemap || fd == tg_trk.hot_fd || fd == tg_restart.track_uffd);
}

static int uffd_open(void) {
  long fd = tg_sys1(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "userfaultfd: %s", strerror((int)-fd));
    return -1;
  }
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
  long r = tg_sys3(SYS_ioctl, fd, UFFDIO_API, &api);
  if (r < 0) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "userfaultfd without write-protect async mode: %s", strerror((int)-r));
    tg_sys1(SYS_close, fd);
    return -1;
  }
  long pm = tg_sys3(SYS_open, "/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
  if (pm < 0) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "open /proc/self/pagemap: %s", strerror((int)-pm));
    tg_sys1(SYS_close, fd);
    return -1;
  }
  tg_trk.uffd = (int)fd;
  tg_trk.pagemap = (int)pm;
  return 0;
}

/* The pages of [s, e) written since they were last protected, appended to the dirty list; with wp,
 * protected again in the same call. Adds their number to *pages. 0, or -errno (EPERM: the range is
 * not registered, e.g. it was unmapped and mapped anew). */
static long scan(uint64_t s, uint64_t e, int wp, uint64_t *pages) {
  uint64_t n0 = tg_trk.ndirty;
  while (s < e) {
    if (tg_trk.dirty_cap - tg_trk.ndirty < 64) { tg_trk.ndirty = n0; return -ENOSPC; }
    struct pm_scan_arg a = {sizeof a, (wp ? PM_SCAN_WP_MATCHING : 0) | PM_SCAN_CHECK_WPASYNC, s, e, 0,
                            (uint64_t)(tg_trk.dirty + tg_trk.ndirty), tg_trk.dirty_cap - tg_trk.ndirty, 0, 0,
                            PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN};
    long r = tg_sys3(SYS_ioctl, tg_trk.pagemap, PAGEMAP_SCAN, &a);
    if (r < 0) { tg_trk.ndirty = n0; return r; }
    tg_trk.ndirty += (uint64_t)r;
    uint64_t next = a.walk_end;
    /* walk_end may fall short of the ranges returned (see capture.c): never scan a range twice */
    if (r > 0 && tg_trk.dirty[tg_trk.ndirty - 1].end > next) next = tg_trk.dirty[tg_trk.ndirty - 1].end;
    if (next <= s) break;
    s = next;
  }
  for (uint64_t i = n0; i < tg_trk.ndirty; i++) *pages += (tg_trk.dirty[i].end - tg_trk.dirty[i].start) / TG_PAGE;
  return 0;
}

TG_HIDDEN uint64_t tg_regions_first_after(const struct tg_region *r, uint64_t n, uint64_t addr) {
  uint64_t lo = 0, hi = n;
  while (lo < hi) {
    uint64_t mid = (lo + hi) / 2;
    if (r[mid].end <= addr) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int covered(uint64_t s, uint64_t e) {
  /* tracked ranges are sorted and disjoint */
  uint64_t lo = tg_regions_first_after(tg_trk.tracked, tg_trk.ntracked, s);
  uint64_t at = s;
  for (uint64_t i = lo; i < tg_trk.ntracked && at < e; i++) {
    if (tg_trk.tracked[i].start > at) return 0;
    at = tg_trk.tracked[i].end;
  }
  return at >= e;
}

/* Should this mapping be tracked at all? (vdso & co and shared file mappings hold no image pages;
 * shared anonymous memory and PROT_NONE mappings are captured whole each time) */
static int trackable(const struct tg_vma *v) {
  if (tg_vma_special(v)) return 0;
  if (v->shared) return 0;
  /* PROT_NONE (reservations, guard areas): the application cannot write there, and protecting
   * every page of a large reservation costs page tables for all of it; such a mapping is captured
   * whole each time, which PAGEMAP_SCAN makes cost only its populated pages */
  if (v->prot == 0) return 0;
  return 1;
}

static int has_content(const struct tg_vma *v) {
  if (tg_vma_special(v)) return 0;
  if (v->shared && v->ino != 0) {
    /* shared file mapping: the file is the content, unless it is deleted (memfd, /dev/zero) */
    size_t n = v->pathlen;
    return n > 10 && memcmp(v->path + n - 10, " (deleted)", 10) == 0;
  }
  return 1;
}

static int is_agent_range(uint64_t s, uint64_t e) {
  if (s >= tg.child_stack && e <= tg.child_stack + TG_CHILD_REGION) return 1;
  return tg_track_owns(s, e);
}

/* Adaptive tracking (track.h): may this mapping become hot? Private anonymous writable memory of
 * some size, and not in an application that uses MADV_DONTFORK (its marks are lifted and set again
 * around the clone by agent.c; the two must not meet on one mapping). */
static int hot_eligible(const struct tg_vma *v) {
  return v->ino == 0 && !v->shared && (v->prot & 3) == 3 && v->end - v->start >= TG_HOT_MIN && tg_ndontfork == 0 &&
         !tg.dontfork_seen;
}

/* The copies' buffer: a memfd mapped shared. 0, or -1 (none: the mappings are captured from the
 * child's own view). */
static int hot_buffer(uint64_t total) {
  if (tg_trk.hot_buf_len >= total) return 0;
  if (tg_trk.hot_buf) tg_sys2(SYS_munmap, tg_trk.hot_buf, tg_trk.hot_buf_len);
  if (tg_trk.hot_fd >= 0) tg_sys1(SYS_close, tg_trk.hot_fd);
  tg_trk.hot_buf = NULL;
  tg_trk.hot_buf_len = 0;
  tg_trk.hot_fd = -1;
  long fd = tg_sys2(SYS_memfd_create, "tg-hot", MFD_CLOEXEC);
  if (fd < 0) return -1;
  /* pages and page tables made now (the threads run): a copy into them later takes no fault */
  long p = tg_sys4(SYS_fallocate, fd, 0, 0, total);
  if (p == 0) p = tg_sys6l(SYS_mmap, 0, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p < 0 && p > -4096) {
    tg_sys1(SYS_close, fd);
    return -1;
  }
  /* MAP_POPULATE maps a shared mapping's pages read-only (to see them dirtied): one write per page
   * now, so that the copy in the pause takes no write fault either */
  for (uint64_t o = 0; o < total; o += TG_PAGE) ((volatile char *)p)[o] = 0;
  tg_trk.hot_buf = (void *)p;
  tg_trk.hot_buf_len = total;
  tg_trk.hot_fd = (int)fd;
  return 0;
}

/* This checkpoint's copies of the mappings captured from a copy (hot, or probed): made here, with
 * every thread parked. A mapping without one is captured by the child from its own view (exact
 * too, only the fork's copy-on-write costs the app again). */
static void hot_copies(void) {
  uint64_t total = 0;
  for (uint32_t i = 0; i < tg_trk.nhot; i++)
    if (tg_trk.hot[i].copy) total += tg_trk.hot[i].end - tg_trk.hot[i].start;
  if (!total) return;
  if (tg_trk.hot_buf_len < total) {
    /* The buffer is made after this checkpoint (tg_track_idle), not while the threads
     * are parked (the first touch of 256 MiB of new memory took ~1.3 s here); until then each hot
     * mapping is captured from the child's view, as any other. */
    tg_trk.hot_want = total;
    for (uint32_t i = 0; i < tg_trk.nhot; i++) tg_trk.hot[i].copy = 0;
    return;
  }
  uint64_t at = (uint64_t)tg_trk.hot_buf;
  for (uint32_t i = 0; i < tg_trk.nhot; i++) {
    struct tg_hot *h = &tg_trk.hot[i];
    if (!h->copy) continue;
    if (!tg_trk.hot_buf) { h->copy = 0; continue; }
    memcpy((void *)at, (const void *)h->start, h->end - h->start);
    h->copy = at;
    at += h->end - h->start;
    tg_trk.hot_pages += (h->end - h->start) / TG_PAGE;
  }
}

static void uffd_round(int can_inc, const char *maps, long maps_len) {
  uint64_t nt = 0;
  int overflow = 0;
  static struct tg_hot hn[TG_HOT_MAX]; /* the adaptive states of the mappings as they are now */
  uint32_t nh = 0;
  uint64_t hot_bytes = 0;
  /* new tracked list is built in place after the old one is no longer needed: collect first */
  for (const char *l = maps; l < maps + maps_len;) {
    const char *e = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && has_content(&v) && !is_agent_range(v.start, v.end)) {
      uint64_t npages = (v.end - v.start) / TG_PAGE;
      tg_trk.pages_scanned += npages;
      int fresh = 1;
      uint64_t cat = (uint64_t)trackable(&v); /* fresh list: 0 untrackable, 1 protect it now, 2 hot (left unprotected) */
      struct tg_hot *h = NULL;
      if (cat && hot_eligible(&v) && nh < TG_HOT_MAX) {
        h = &hn[nh++];
        *h = (struct tg_hot){v.start, v.end, 0, 0, TG_HOT_PROBE_FIRST, 101, 0};
        for (uint32_t i = 0; i < tg_trk.nhot; i++)
          if (tg_trk.hot[i].start == v.start && tg_trk.hot[i].end == v.end) { *h = tg_trk.hot[i]; h->copy = 0; break; }
      }
      int registered = cat && covered(v.start, v.end);
      if (h && h->hot && (!registered || hot_bytes + (v.end - v.start) > TG_HOT_BUDGET)) h->hot = 0; /* captured whole, protected again */
      if (h && h->hot) {
        /* hot: not scanned (every page it wrote since it was last protected counts as written), copied whole */
        hot_bytes += v.end - v.start;
        h->copy = 1;
        cat = 2;
        if (++h->rounds >= h->interval) {
          /* probe: protected again now; the next checkpoint's scan measures its share */
          h->hot = 0;
          h->rounds = 0;
          h->pct = 101;
          h->interval = h->interval * 2 > TG_HOT_PROBE_MAX ? TG_HOT_PROBE_MAX : h->interval * 2;
          cat = 1;
        }
      } else if (can_inc && registered) {
        uint64_t w = 0;
        long r;
        if (h && h->pct >= TG_HOT_PCT / 2 && hot_bytes + (v.end - v.start) <= TG_HOT_BUDGET) {
          /* a candidate: its share is measured first without protecting anything */
          uint64_t n0 = tg_trk.ndirty;
          r = scan(v.start, v.end, 0, &w);
          tg_trk.ndirty = n0;
          if (r == 0 && w * 100 >= (uint64_t)TG_HOT_PCT * npages) {
            h->hot = 1;
            h->rounds = 0;
            h->pct = (uint32_t)(w * 100 / npages);
            h->copy = 1;
            hot_bytes += v.end - v.start;
            tg_trk.pages_written += w;
            cat = 2;
            goto add;
          }
          w = 0;
        }
        r = scan(v.start, v.end, 1, &w);
        if (r == 0) {
          fresh = 0;
          tg_trk.pages_written += w;
          if (h) {
            h->pct = (uint32_t)(w * 100 / npages);
            if (h->pct < TG_HOT_PCT) h->interval = TG_HOT_PROBE_FIRST; /* quiet: tracked page by page again */
          }
        } else if (r == -ENOSPC) {
          can_inc = 0; /* give up: this checkpoint becomes full */
          overflow = 1;
        }
      }
    add:
      if (fresh && tg_trk.nfresh < tg_trk.fresh_cap) tg_trk.fresh[tg_trk.nfresh++] = (struct tg_region){v.start, v.end, cat};
    }
    l = e + 1;
  }
  memcpy(tg_trk.hot, hn, nh * sizeof *hn);
  tg_trk.nhot = nh;
  if (overflow) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "too many written ranges to list; this checkpoint is full");
    tg_trk.incremental = 0;
  }
  hot_copies();
  /* register and protect fresh mappings; rebuild the tracked list from the current map */
  for (uint64_t i = 0; i < tg_trk.nfresh; i++) {
    struct tg_region *f = &tg_trk.fresh[i];
    if (f->categories != 1) continue;
    struct uffdio_register reg = {.range = {f->start, f->end - f->start}, .mode = UFFDIO_REGISTER_MODE_WP};
    long r = tg_sys3(SYS_ioctl, tg_trk.uffd, UFFDIO_REGISTER, &reg);
    if (r == 0) {
      struct uffdio_writeprotect wp = {.range = {f->start, f->end - f->start}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
      r = tg_sys3(SYS_ioctl, tg_trk.uffd, UFFDIO_WRITEPROTECT, &wp);
    }
    if (r != 0) f->categories = 0; /* cannot be tracked: captured whole every time */
  }
  uint64_t fi = 0;
  for (const char *l = maps; l < maps + maps_len;) {
    const char *e = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && has_content(&v) && trackable(&v) && !is_agent_range(v.start, v.end)) {
      while (fi < tg_trk.nfresh && tg_trk.fresh[fi].start < v.start) fi++;
      int ok = !(fi < tg_trk.nfresh && tg_trk.fresh[fi].start == v.start && !tg_trk.fresh[fi].categories);
      if (ok && nt < tg_trk.tracked_cap) {
        if (nt && tg_trk.tracked[nt - 1].end == v.start) tg_trk.tracked[nt - 1].end = v.end;
        else tg_trk.tracked[nt++] = (struct tg_region){v.start, v.end, 0};
      }
    }
    l = e + 1;
  }
  tg_trk.ntracked = nt;
}

static int hash_tables(const char *maps, long maps_len) {
  uint64_t pages = 0;
  for (const char *l = maps; l < maps + maps_len;) {
    const char *e = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && has_content(&v) && !is_agent_range(v.start, v.end)) pages += (v.end - v.start) / TG_PAGE;
    l = e + 1;
  }
  tg_trk.pages_scanned = pages;
  uint64_t need = sizeof(struct tg_hash_table) + pages * sizeof(struct tg_page_hash);
  need = (need + 4095) & ~4095ull;
  if (!tg_trk.next || tg_trk.next_len < need) {
    if (tg_trk.next) tg_sys2(SYS_munmap, tg_trk.next, tg_trk.next_len);
    tg_trk.next = anon(need, 1);
    tg_trk.next_len = tg_trk.next ? need : 0;
    if (!tg_trk.next) return -1;
  }
  tg_trk.next->count = 0;
  tg_trk.next->cap = pages;
  return 0;
}

/* Is [s, e) one whole mapping in maps? */
static int one_mapping(const char *maps, long maps_len, uint64_t s, uint64_t e) {
  for (const char *l = maps; l < maps + maps_len;) {
    const char *le = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, le, &v) == 0 && v.start <= s && v.end > s) return v.start == s && v.end == e;
    l = le + 1;
  }
  return 0;
}

TG_HIDDEN void tg_track_before_clone(const char *maps, long maps_len) {
  for (uint32_t i = 0; i < tg_trk.nhot; i++) {
    struct tg_hot *h = &tg_trk.hot[i];
    if (!h->copy) continue;
    /* The capture cuts its records from these maps (read after the tracker registered fresh
     * mappings, which may merge with a neighbour): a hot mapping that is no longer one mapping of
     * its own is captured from the child's view, and this checkpoint full (exact either way). */
    if (!one_mapping(maps, maps_len, h->start, h->end)) {
      h->copy = 0;
      h->hot = 0;
      if (tg_trk.incremental) {
        tg_trk.incremental = 0;
        snprintf(tg_trk.reason, sizeof tg_trk.reason, "a mapping copied whole by adaptive tracking was merged with another; this checkpoint is full");
      }
      continue;
    }
    /* (refused: the child maps it copy-on-write as any other, and still reads the copy) */
    if (tg_sys3(SYS_madvise, h->start, h->end - h->start, MADV_DONTFORK) != 0) continue;
  }
}

TG_HIDDEN void tg_track_after_clone(void) {
  for (uint32_t i = 0; i < tg_trk.nhot; i++) {
    struct tg_hot *h = &tg_trk.hot[i];
    if (!h->copy) continue;
    /* the application's own forks must inherit it: should the kernel refuse, the mapping is no
     * longer adaptive (the next checkpoint, not finding the mark lifted, would leave it so) */
    if (tg_sys3(SYS_madvise, h->start, h->end - h->start, MADV_DOFORK) != 0) h->hot = 0;
  }
}

TG_HIDDEN const void *tg_track_hot_copy(uint64_t addr) {
  for (uint32_t i = 0; i < tg_trk.nhot; i++) {
    const struct tg_hot *h = &tg_trk.hot[i];
    if (h->copy && addr >= h->start && addr < h->end) return (const void *)(h->copy + (addr - h->start));
  }
  return NULL;
}

TG_HIDDEN int tg_track_before_snapshot(int want_incremental, uint64_t parent_seq, const char *maps, long maps_len) {
  tg_trk.incremental = 0;
  tg_trk.hot_pages = 0;
  for (uint32_t i = 0; i < tg_trk.nhot; i++) tg_trk.hot[i].copy = 0;
  tg_trk.ndirty = tg_trk.nfresh = 0;
  tg_trk.pages_scanned = tg_trk.pages_written = 0;
  tg_trk.reason[0] = 0;
  tg_restart.track_uffd = -1; /* in the image: no uffd until a restorer arms one */
  if (tg_trk.mode == TG_TRACK_NONE) {
    tg_trk.mode = tg_trk.requested;
    if (tg_trk.mode == TG_TRACK_UFFD && uffd_open() != 0) tg_trk.mode = TG_TRACK_HASH; /* reason kept */
  }
  if (tg_trk.mode == TG_TRACK_OFF) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "dirty-page tracking is off (run --tracking none)");
    return 0;
  }
  int can_inc = want_incremental && tg_trk.base_seq != 0 && tg_trk.base_seq == parent_seq;
  if (!want_incremental) snprintf(tg_trk.reason, sizeof tg_trk.reason, "full checkpoint requested");
  else if (tg_trk.base_seq == 0) snprintf(tg_trk.reason, sizeof tg_trk.reason, "no tracked base yet (first checkpoint of this process or after a restore)");
  else if (tg_trk.base_seq != parent_seq)
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "the store's last checkpoint (seq %llu) is not the agent's base (seq %llu)",
             (unsigned long long)parent_seq, (unsigned long long)tg_trk.base_seq);
  int remapped = !tg_trk.tracked;
  if (arrays() != 0) { snprintf(tg_trk.reason, sizeof tg_trk.reason, "out of memory for tracking"); return remapped; }
  if (tg_trk.mode == TG_TRACK_UFFD) {
    tg_trk.incremental = can_inc;
    void *hb = tg_trk.hot_buf;
    uffd_round(can_inc, maps, maps_len);
    remapped |= hb != tg_trk.hot_buf;
  } else {
    void *before = tg_trk.next;
    if (hash_tables(maps, maps_len) != 0) { snprintf(tg_trk.reason, sizeof tg_trk.reason, "out of memory for page hashes"); return 1; }
    remapped |= before != tg_trk.next;
    tg_trk.incremental = can_inc && tg_trk.prev != NULL;
  }
  return remapped;
}

TG_HIDDEN void tg_track_idle(void) {
  if (tg_trk.hot_want > tg_trk.hot_buf_len && hot_buffer(tg_trk.hot_want) != 0) { /* none: tried again at the next checkpoint */ }
  tg_trk.hot_want = 0;
}

TG_HIDDEN void tg_track_after_snapshot(int ok, uint64_t seq) {
  if (!ok) {
    /* written pages were reported and protected again, but not stored: start over */
    tg_trk.base_seq = 0;
    return;
  }
  if (tg_trk.mode == TG_TRACK_OFF) return;
  tg_trk.base_seq = seq;
  if (tg_trk.mode == TG_TRACK_HASH) {
    struct tg_hash_table *t = tg_trk.prev;
    uint64_t tl = tg_trk.prev_len;
    tg_trk.prev = tg_trk.next;
    tg_trk.prev_len = tg_trk.next_len;
    tg_trk.next = t;
    tg_trk.next_len = tl;
  }
}

TG_HIDDEN void tg_track_after_fork(void) {
  if (tg_trk.uffd >= 0) tg_sys1(SYS_close, tg_trk.uffd);
  if (tg_trk.pagemap >= 0) tg_sys1(SYS_close, tg_trk.pagemap); /* /proc/self/pagemap of the parent's mm */
  if (tg_trk.prev) tg_sys2(SYS_munmap, tg_trk.prev, tg_trk.prev_len); /* MAP_SHARED with the parent */
  if (tg_trk.next) tg_sys2(SYS_munmap, tg_trk.next, tg_trk.next_len);
  if (tg_trk.hot_buf) tg_sys2(SYS_munmap, tg_trk.hot_buf, tg_trk.hot_buf_len); /* MAP_SHARED with the parent */
  if (tg_trk.hot_fd >= 0) tg_sys1(SYS_close, tg_trk.hot_fd);
  tg_trk.hot_fd = -1;
  tg_trk.hot_buf = NULL;
  tg_trk.hot_buf_len = 0;
  tg_trk.nhot = 0;
  tg_trk.uffd = tg_trk.pagemap = -1;
  tg_trk.prev = tg_trk.next = NULL; /* the private arrays (tracked, dirty, fresh) are the child's own copies: kept */
  tg_trk.prev_len = tg_trk.next_len = 0;
  tg_trk.ntracked = tg_trk.ndirty = tg_trk.nfresh = 0;
  tg_trk.base_seq = 0;
  tg_trk.mode = TG_TRACK_NONE;
}

TG_HIDDEN void tg_track_reset(void) {
  /* none of these exist in a restored process (they are never part of an image) */
  tg_trk.uffd = tg_trk.pagemap = -1;
  tg_trk.tracked = tg_trk.dirty = tg_trk.fresh = NULL;
  tg_trk.prev = tg_trk.next = NULL;
  tg_trk.hot_buf = NULL;
  tg_trk.hot_buf_len = 0;
  tg_trk.hot_fd = -1;
  tg_trk.nhot = 0;
  tg_trk.prev_len = tg_trk.next_len = 0;
  tg_trk.ntracked = tg_trk.ndirty = tg_trk.nfresh = 0;
  tg_trk.base_seq = 0;
  tg_trk.mode = TG_TRACK_NONE;
}

TG_HIDDEN int tg_track_adopt(int uffd, uint64_t seq, const char *maps, long maps_len) {
  long pm = tg_sys3(SYS_open, "/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
  if (pm < 0 || arrays() != 0) {
    if (pm >= 0) tg_sys1(SYS_close, pm);
    tg_sys1(SYS_close, uffd);
    return -1;
  }
  tg_trk.uffd = uffd;
  tg_trk.pagemap = (int)pm;
  tg_trk.mode = TG_TRACK_UFFD;
  /* The tracked list: every trackable mapping now. The restorer registered those of the image; one
   * the application made since (its threads run already) is not registered, and the next scan of it
   * fails with EPERM, which makes it fresh (captured whole), as for any mapping made between two
   * checkpoints. */
  uint64_t nt = 0;
  for (const char *l = maps; l < maps + maps_len;) {
    const char *e = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && has_content(&v) && trackable(&v) && !is_agent_range(v.start, v.end) &&
        nt < tg_trk.tracked_cap) {
      if (nt && tg_trk.tracked[nt - 1].end == v.start) tg_trk.tracked[nt - 1].end = v.end;
      else tg_trk.tracked[nt++] = (struct tg_region){v.start, v.end, 0};
    }
    l = e + 1;
  }
  tg_trk.ntracked = nt;
  tg_trk.base_seq = seq;
  return 0;
}
