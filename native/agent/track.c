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

TG_HIDDEN struct tg_track tg_trk = {.mode = TG_TRACK_NONE, .requested = TG_TRACK_UFFD, .uffd = -1, .pagemap = -1};

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
  };
  for (size_t i = 0; i < sizeof r / sizeof *r; i++)
    if (r[i].p && s >= (uint64_t)r[i].p && e <= (uint64_t)r[i].p + r[i].len) return 1;
  return 0;
}

TG_HIDDEN int tg_track_is_hidden_fd(int fd) {
  /* (track_uffd: armed by the restorer, until the manager adopts it) */
  return fd >= 0 && (fd == tg_trk.uffd || fd == tg_trk.pagemap || fd == tg_restart.track_uffd);
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

/* The pages of [s, e) written since the last scan, protected again. 0, or -errno (EPERM: the range
 * is not registered, e.g. it was unmapped and mapped anew). */
static long scan(uint64_t s, uint64_t e) {
  uint64_t n0 = tg_trk.ndirty;
  while (s < e) {
    if (tg_trk.dirty_cap - tg_trk.ndirty < 64) return -ENOSPC;
    struct pm_scan_arg a = {sizeof a, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, s, e, 0,
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
  for (uint64_t i = n0; i < tg_trk.ndirty; i++) tg_trk.pages_written += (tg_trk.dirty[i].end - tg_trk.dirty[i].start) / TG_PAGE;
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

static void uffd_round(int can_inc, const char *maps, long maps_len) {
  uint64_t nt = 0;
  int overflow = 0;
  /* new tracked list is built in place after the old one is no longer needed: collect first */
  for (const char *l = maps; l < maps + maps_len;) {
    const char *e = tg_next_line(l, maps + maps_len);
    struct tg_vma v;
    if (tg_parse_maps_line(l, e, &v) == 0 && has_content(&v) && !is_agent_range(v.start, v.end)) {
      tg_trk.pages_scanned += (v.end - v.start) / TG_PAGE;
      int fresh = 1;
      if (can_inc && trackable(&v) && covered(v.start, v.end)) {
        long r = scan(v.start, v.end);
        if (r == 0) fresh = 0;
        else if (r == -ENOSPC) { can_inc = 0; overflow = 1; } /* give up: this checkpoint becomes full */
      }
      if (fresh && tg_trk.nfresh < tg_trk.fresh_cap) tg_trk.fresh[tg_trk.nfresh++] = (struct tg_region){v.start, v.end, trackable(&v)};
    }
    l = e + 1;
  }
  if (overflow) {
    snprintf(tg_trk.reason, sizeof tg_trk.reason, "too many written ranges to list; this checkpoint is full");
    tg_trk.incremental = 0;
  }
  /* register and protect fresh mappings; rebuild the tracked list from the current map */
  for (uint64_t i = 0; i < tg_trk.nfresh; i++) {
    struct tg_region *f = &tg_trk.fresh[i];
    if (!f->categories) continue;
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

TG_HIDDEN int tg_track_before_snapshot(int want_incremental, uint64_t parent_seq, const char *maps, long maps_len) {
  tg_trk.incremental = 0;
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
    uffd_round(can_inc, maps, maps_len);
  } else {
    void *before = tg_trk.next;
    if (hash_tables(maps, maps_len) != 0) { snprintf(tg_trk.reason, sizeof tg_trk.reason, "out of memory for page hashes"); return 1; }
    remapped |= before != tg_trk.next;
    tg_trk.incremental = can_inc && tg_trk.prev != NULL;
  }
  return remapped;
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
