/* Direct page reads, stage-2 side (see pages-direct.h): runs inside the blob, after the application's
 * mappings exist and before the image's PAGES records are read. For each stored raw block of the plan:
 * its 16-byte header and pages are read from the pack file into the scratch buffer, the header must be a
 * raw block of the expected size and the pages' CRC-32C must equal the header's (else the restore fails
 * and nothing runs), then the pages are copied into place.
 * Same rules as blob.c: no libc, no data outside the section, checked by check-blob.sh. */
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>

#include "../common/crc32c-fast.h"
#include "../common/sys.h"
#include "blob.h"
#include "pages-direct.h"

#define BLOB __attribute__((section("tgblob"), noinline))
#define STEP_DIRECT_READ 14 /* value: the block's index in the plan */
#define STEP_DIRECT_CHECK 15
#define STEP_DIRECT_PLACE 16
#define STEP_MPROTECT 6
#define PROT_R 1
#define PROT_W 2
#define MADV_POPULATE_WRITE_ 23
#define O_CLOEXEC_ 02000000
#define MAP_PRIVATE_ 0x02
#define MAP_ANONYMOUS_ 0x20
#define MAP_GROWSDOWN_ 0x100
#define VMA_UFFD 2 /* in blob_vma.opened while registered here; cleared before returning (blob.c tests opened != 0 only after) */

/* "ERR #<step> <errno> <hex value>\n" on the report pipe, as blob.c's fail (decoded by launcher/init.c) */
__attribute__((noreturn)) BLOB static void dp_fail(struct blob_plan *p, int step, long err, uint64_t val) {
  char b[64];
  int n = 0;
  b[n++] = 'E'; b[n++] = 'R'; b[n++] = 'R'; b[n++] = ' '; b[n++] = '#';
  b[n++] = (char)('0' + step / 10); b[n++] = (char)('0' + step % 10);
  b[n++] = ' ';
  uint64_t e = (uint64_t)(err < 0 ? -err : err);
  char t[24];
  int k = 0;
  do { t[k++] = (char)('0' + e % 10); e /= 10; } while (e);
  while (k) b[n++] = t[--k];
  b[n++] = ' ';
  do { int d = (int)(val & 15); t[k++] = (char)(d < 10 ? '0' + d : 'a' + d - 10); val >>= 4; } while (val);
  while (k) b[n++] = t[--k];
  b[n++] = '\n';
  tg_sys3(SYS_write, p->report_fd, b, n);
  tg_sys1(SYS_exit_group, 100 + step);
  for (;;) {}
}

BLOB static int dp_pread(int fd, void *buf, uint64_t len, uint64_t off) {
  uint64_t got = 0;
  while (got < len) {
    long r = tg_sys4(SYS_pread64, fd, (char *)buf + got, len - got, off + got);
    if (r == -4 /* EINTR */) continue;
    if (r <= 0) return r < 0 ? (int)r : -5 /* EIO: the pack ends early */;
    got += (uint64_t)r;
  }
  return 0;
}

/* A userfaultfd for filling anonymous private memory with UFFDIO_COPY: the kernel allocates each page and
 * copies into it, where MADV_POPULATE_WRITE then a copy zero-fills every page first and then writes it
 * again through the application's mapping (~2 s per GiB here against ~0.2). -1 if the kernel refuses. */
BLOB static int dp_uffd(void) {
  long fd = tg_sys1(SYS_userfaultfd, O_CLOEXEC_);
  if (fd < 0) return -1;
  struct uffdio_api api;
  api.api = UFFD_API;
  api.features = 0;
  api.ioctls = 0;
  if (tg_sys3(SYS_ioctl, fd, UFFDIO_API, &api) < 0) {
    tg_sys1(SYS_close, fd);
    return -1;
  }
  return (int)fd;
}

/* The mapping that must hold [addr, addr + len), made writable for the refill (blob.c protects it again);
 * an anonymous private one is registered with the userfaultfd (missing pages) when there is one. */
BLOB static struct blob_vma *dp_open(struct blob_plan *p, uint64_t addr, uint64_t len, uint64_t i, int uffd) {
  uint64_t lo = 0, hi = p->nvmas;
  while (lo < hi) {
    uint64_t mid = (lo + hi) / 2;
    if (p->vmas[mid].end <= addr) lo = mid + 1;
    else hi = mid;
  }
  if (lo >= p->nvmas || p->vmas[lo].start > addr || p->vmas[lo].end < addr + len || !p->vmas[lo].fill) dp_fail(p, STEP_DIRECT_PLACE, 0, i);
  struct blob_vma *v = &p->vmas[lo];
  if (!v->opened && (v->prot & (PROT_R | PROT_W)) != (PROT_R | PROT_W)) {
    long r = tg_sys3(SYS_mprotect, v->start, v->end - v->start, v->prot | PROT_R | PROT_W);
    if (r < 0) dp_fail(p, STEP_MPROTECT, r, v->start);
    v->opened = 1;
  }
  if (uffd >= 0 && !(v->opened & VMA_UFFD) && v->fd < 0 && (v->mflags & (MAP_PRIVATE_ | MAP_ANONYMOUS_ | MAP_GROWSDOWN_)) == (MAP_PRIVATE_ | MAP_ANONYMOUS_)) {
    struct uffdio_register reg;
    reg.range.start = v->start;
    reg.range.len = v->end - v->start;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    reg.ioctls = 0;
    if (tg_sys3(SYS_ioctl, uffd, UFFDIO_REGISTER, &reg) == 0) v->opened |= VMA_UFFD; /* else: filled by copy */
  }
  return v;
}

/* Copies n bytes into fresh pages at dst of a registered mapping. */
BLOB static long dp_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t n) {
  uint64_t done = 0;
  while (done < n) {
    struct uffdio_copy c;
    c.dst = dst + done;
    c.src = (uint64_t)src + done;
    c.len = n - done;
    c.mode = 0;
    c.copy = 0;
    long r = tg_sys3(SYS_ioctl, uffd, UFFDIO_COPY, &c);
    if (c.copy > 0) done += (uint64_t)c.copy;
    else if (r < 0 && r != -11 /* EAGAIN: retry the rest */) return r;
    else if (r == 0) return -5; /* nothing copied and no error: do not spin */
  }
  return 0;
}

/* restore --lazy (lazy.h): a userfaultfd that also reports forks, moves and removals (the server refuses
 * the first two and remembers the last). -1 if the kernel refuses. */
BLOB static int dp_uffd_lazy(void) {
  long fd = tg_sys1(SYS_userfaultfd, O_CLOEXEC_);
  if (fd < 0) return -1;
  struct uffdio_api api;
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE;
  api.ioctls = 0;
  if (tg_sys3(SYS_ioctl, fd, UFFDIO_API, &api) < 0) {
    tg_sys1(SYS_close, fd);
    return -1;
  }
  return (int)fd;
}

BLOB void tg_direct_read(struct blob_plan *p) {
  struct tg_dp_blob *d = (struct tg_dp_blob *)p->direct;
  int populate = 1;
  struct tg_crc32c_k crc_k = {0, 0}; /* (three streams: ~2.6x the speed of one on a block in the cache) */
  int uffd = d->no_uffd ? -1 : d->lazy ? dp_uffd_lazy() : dp_uffd();
  int lazy = d->lazy && uffd >= 0;
  if (lazy) {
    /* register every mapping the plan fills that can be (anonymous private); the blocks that (also) go
     * elsewhere are read now, the rest by the page server once the blob hands it the uffd */
    for (uint64_t i = 0; i < d->nblocks; i++) {
      const struct tg_dp_block *b = &d->blocks[i];
      const struct tg_dp_piece *pc = &d->pieces[b->first_piece];
      for (uint32_t k = 0; k < b->npieces; k++) dp_open(p, pc[k].addr, (uint64_t)pc[k].count * 4096, i, uffd);
    }
    p->lazy_uffd = uffd;
  }
  for (uint64_t i = 0; i < d->nblocks; i++) {
    const struct tg_dp_block *b = &d->blocks[i];
    if (lazy) {
      int later = 1;
      for (uint32_t k = 0; k < b->npieces; k++)
        if (!(dp_open(p, d->pieces[b->first_piece + k].addr, (uint64_t)d->pieces[b->first_piece + k].count * 4096, i, -1)->opened & VMA_UFFD)) later = 0;
      if (later) continue;
    }
    const struct tg_dp_piece *pc = &d->pieces[b->first_piece];
    uint64_t len = (uint64_t)b->npages * 4096;
    int fd = d->fds[b->pack];
    for (uint32_t k = 0; k < b->npieces; k++) dp_open(p, pc[k].addr, (uint64_t)pc[k].count * 4096, i, uffd);
    /* through the scratch buffer, which stays in the cache: reading into place and checking there cost
     * ~2.5x more here (first writes to fresh memory, then reading them back) */
    unsigned char *data = d->scratch;
    long r = dp_pread(fd, data, TG_DP_BLOCK_HEADER + len, b->offset);
    if (r != 0) dp_fail(p, STEP_DIRECT_READ, r, i);
    uint32_t hdr[4];
    for (int k = 0; k < 4; k++)
      hdr[k] = (uint32_t)data[4 * k] | (uint32_t)data[4 * k + 1] << 8 | (uint32_t)data[4 * k + 2] << 16 | (uint32_t)data[4 * k + 3] << 24;
    if (hdr[0] != TG_DP_RAW_MAGIC || hdr[1] != b->npages || hdr[2] != len) dp_fail(p, STEP_DIRECT_CHECK, 0, i);
    if (tg_crc32c_3way(0, data + TG_DP_BLOCK_HEADER, len, &crc_k) != hdr[3]) dp_fail(p, STEP_DIRECT_CHECK, 0, i);
    for (uint32_t k = 0; k < b->npieces; k++) {
      void *dst = (void *)pc[k].addr;
      const void *src = data + TG_DP_BLOCK_HEADER + (uint64_t)pc[k].index * 4096;
      uint64_t n = (uint64_t)pc[k].count * 4096;
      if (dp_open(p, pc[k].addr, n, i, -1)->opened & VMA_UFFD) {
        r = dp_uffd_copy(uffd, pc[k].addr, src, n);
        if (r < 0) dp_fail(p, STEP_DIRECT_READ, r, i);
        continue;
      }
      /* one call faults the run's pages in (as blob.c does for records); EINVAL: an older kernel */
      if (populate) {
        r = tg_sys3(SYS_madvise, dst, n, MADV_POPULATE_WRITE_);
        if (r == -22) populate = 0;
        else if (r < 0) dp_fail(p, STEP_DIRECT_READ, r, i);
      }
      __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
    }
  }
  if (lazy) return; /* the mappings stay registered: blob.c hands the uffd to the page server */
  /* every registered mapping back to normal before anything else touches it (a missing page of a
   * registered range would block the toucher for ever: nobody serves the userfaultfd) */
  for (uint64_t k = 0; k < p->nvmas; k++) {
    struct blob_vma *v = &p->vmas[k];
    if (!(v->opened & VMA_UFFD)) continue;
    struct uffdio_range rg;
    rg.start = v->start;
    rg.len = v->end - v->start;
    long r = tg_sys3(SYS_ioctl, uffd, UFFDIO_UNREGISTER, &rg);
    if (r < 0) dp_fail(p, STEP_DIRECT_PLACE, r, v->start);
    v->opened &= ~(uint32_t)VMA_UFFD;
  }
  if (uffd >= 0) tg_sys1(SYS_close, uffd);
}
