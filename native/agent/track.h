/* Dirty-page tracking between checkpoints (docs/format.md, "Incremental images").
 *
 * uffd mode: every mapping is registered with userfaultfd in write-protect async mode; at each
 * checkpoint, with all threads parked, PAGEMAP_SCAN returns the pages written since the last one and
 * protects them again in the same call. Mappings that appeared, moved or grew since are "fresh":
 * captured whole once, then registered.
 * hash mode (fallback, or forced): the snapshot child hashes every captured page and compares with
 * the table the previous checkpoint left in shared memory.
 *
 * Adaptive tracking (uffd mode, docs/engine.md "Adaptive tracking"): a private anonymous writable
 * mapping of at least TG_HOT_MIN bytes whose share of written pages at a checkpoint reaches
 * TG_HOT_PCT % is "hot" from then on: it is no longer write-protected, and at each checkpoint the
 * manager copies it whole while the threads are parked (into hot_buf, a memfd mapped shared, so
 * neither the copy nor the fork write-protects anything) and the snapshot child, which does not map
 * it (MADV_DONTFORK around the clone), stores it whole from the copy, read with pread. After `interval` checkpoints a
 * hot mapping is write-protected again (a probe): the next checkpoint's scan measures its share
 * afresh, and one that went quiet stays tracked page by page. */
#ifndef TG_TRACK_H
#define TG_TRACK_H
#include <stdint.h>

#define TG_TRACK_NONE 0
#define TG_TRACK_UFFD 1
#define TG_TRACK_HASH 2
#define TG_TRACK_OFF 3 /* --tracking none: every checkpoint full, nothing armed */

struct tg_region { uint64_t start, end, categories; }; /* struct page_region of PAGEMAP_SCAN */
struct tg_page_hash { uint64_t addr, hash; };
struct tg_hash_table { uint64_t count, cap; struct tg_page_hash e[]; };

#define TG_HOT_MIN (1ull << 20)
#define TG_HOT_PCT 50
#define TG_HOT_MAX 32                 /* mappings with an adaptive state */
#define TG_HOT_BUDGET (1ull << 30)   /* bytes of hot mappings copied at one checkpoint, at most */
#define TG_HOT_PROBE_FIRST 4          /* hot checkpoints before the first probe; doubles up to ... */
#define TG_HOT_PROBE_MAX 16

/* One mapping's adaptive state, keyed by its exact range. */
struct tg_hot {
  uint64_t start, end;
  uint32_t hot;        /* 1: not write-protected, copied whole at each checkpoint */
  uint32_t rounds;     /* checkpoints since it became hot or was last probed */
  uint32_t interval;   /* hot checkpoints before the next probe */
  uint32_t pct;        /* written share at the last scan (0-100), or 101: not measured */
  uint64_t copy;       /* this checkpoint: its copy in hot_buf (0: none) */
};

struct tg_track {
  int mode;              /* chosen at the first checkpoint, kept for the agent's life */
  int requested;         /* mode asked for (TG_TRACK_UFFD unless --tracking=hash) */
  int uffd, pagemap;     /* uffd mode: hidden fds */
  uint64_t base_seq;     /* image seq the tracking state is relative to; 0 = none (next is full) */
  /* registered ranges (uffd) */
  struct tg_region *tracked;
  uint64_t ntracked, tracked_cap;
  /* results of this checkpoint's scan, read by the snapshot child */
  int incremental;       /* this checkpoint is incremental */
  struct tg_region *dirty;   /* written ranges, address order */
  uint64_t ndirty, dirty_cap;
  struct tg_region *fresh;   /* mappings captured whole (new, moved, grown, untrackable) */
  uint64_t nfresh, fresh_cap;
  uint64_t pages_scanned, pages_written;
  /* hash mode: previous table and the one the child fills (MAP_SHARED) */
  struct tg_hash_table *prev, *next;
  uint64_t prev_len, next_len;   /* mapping sizes */
  char reason[160];              /* why this checkpoint is full, if it is */
  /* adaptive tracking (uffd mode) */
  struct tg_hot hot[TG_HOT_MAX];
  uint32_t nhot;
  void *hot_buf;                 /* MAP_SHARED of hot_fd: the fork leaves the parent's copies writable */
  uint64_t hot_buf_len;
  int hot_fd;                    /* memfd behind hot_buf (hidden): the child reads it with pread, never mapping a page */
  uint64_t hot_want;             /* bytes the buffer lacked at the last checkpoint: made after it, not in a pause */
  uint64_t hot_pages;            /* pages copied whole as hot at this checkpoint */
};

extern struct tg_track tg_trk __attribute__((visibility("hidden")));

/* Manager, all threads parked, parent_maps read: decides full or incremental for this checkpoint,
 * scans and re-protects (uffd), prepares the hash tables (hash). want_incremental/parent_seq come
 * from the request. */
/* Returns 1 if it mapped or unmapped memory of its own (the caller then reads the maps again). */
__attribute__((visibility("hidden"))) int tg_track_before_snapshot(int want_incremental, uint64_t parent_seq,
                                                                    const char *maps, long maps_len);
/* Manager, after the snapshot child ended: success makes this image the new base. */
__attribute__((visibility("hidden"))) void tg_track_after_snapshot(int ok, uint64_t seq);
/* After a restore: every fd and mapping of the tracker is gone; the next checkpoint is full. */
__attribute__((visibility("hidden"))) void tg_track_reset(void);
/* After a restore whose restorer armed `uffd` on the restored memory (image seq `seq`): the tracker
 * takes it, and the next checkpoint may be incremental on that image. 0, or -1 (uffd closed: full). */
__attribute__((visibility("hidden"))) int tg_track_adopt(int uffd, uint64_t seq, const char *maps, long maps_len);
/* In a forked child: the tracker's fds and shared tables are the parent's; drop them (the child's
 * mappings lost their registration in the fork): the child's first checkpoint is full. */
__attribute__((visibility("hidden"))) void tg_track_after_fork(void);
/* Manager, right before and right after the snapshot clone: the hot mappings copied at this
 * checkpoint are left out of the child (MADV_DONTFORK), then inherited again by any fork. maps:
 * the maps the capture cuts its records from. */
__attribute__((visibility("hidden"))) void tg_track_before_clone(const char *maps, long maps_len);
__attribute__((visibility("hidden"))) void tg_track_after_clone(void);
/* Manager, after a checkpoint's reply, the threads running: makes the hot mappings' copy buffer
 * the last checkpoint found lacking (its pages are touched once here, not in a pause). */
__attribute__((visibility("hidden"))) void tg_track_idle(void);
/* Snapshot child: the copy of the page at addr of a hot mapping copied at this checkpoint, or NULL. */
__attribute__((visibility("hidden"))) const void *tg_track_hot_copy(uint64_t addr);
/* Index of the first of n sorted, disjoint regions that ends after addr (n if none). */
__attribute__((visibility("hidden"))) uint64_t tg_regions_first_after(const struct tg_region *r, uint64_t n, uint64_t addr);
/* Ranges of the agent's own that are never part of an image. */
__attribute__((visibility("hidden"))) int tg_track_owns(uint64_t start, uint64_t end);
__attribute__((visibility("hidden"))) int tg_track_is_hidden_fd(int fd);
#endif
