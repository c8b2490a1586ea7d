/* PAGEMAP_SCAN (Linux 6.7+), declared here because the build's kernel headers may predate it:
 * asks the kernel for the ranges of a mapping whose pages are in given categories, so the cost of
 * walking a mapping follows its populated pages, not its size. */
#ifndef TG_PAGEMAP_H
#define TG_PAGEMAP_H
#include <stdint.h>
#include <sys/ioctl.h>

#define TG_PAGE_IS_FILE (1 << 2)
#define TG_PAGE_IS_PRESENT (1 << 3)
#define TG_PAGE_IS_SWAPPED (1 << 4)

struct tg_pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
#define TG_PAGEMAP_SCAN _IOWR('f', 16, struct tg_pm_scan_arg)
#endif
