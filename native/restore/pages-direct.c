/* Direct page reads, stage-1 side (see pages-direct.h): the plan is read and checked in main, before
 * anything is created; the pack files are opened by the new process itself (stage 1), so that neither
 * the outer process nor the namespace's init keeps them open for the application's lifetime. */
#include "pages-direct.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/crc32c.h"
#include "blob.h"

/* One plan per image (a process tree: the Nth --direct is the Nth --image's). */
struct dp {
  int loaded;
  struct tg_dp_header h;
  char **paths;
  struct tg_dp_block *blocks;
  struct tg_dp_piece *pieces;
};
static struct dp *plans;
static size_t nplans;

static int bad(const char *path, const char *why, unsigned long long v) {
  fprintf(stderr, "tardigrade-restore: invalid restore plan %s: ", path);
  fprintf(stderr, why, v);
  fprintf(stderr, "\n");
  return -1;
}

int tg_direct_load(size_t k, const char *path) {
  if (k >= nplans) {
    struct dp *n = realloc(plans, (k + 1) * sizeof *plans);
    if (!n) return bad(path, "out of memory (%llu)", (unsigned long long)k);
    memset(n + nplans, 0, (k + 1 - nplans) * sizeof *n);
    plans = n;
    nplans = k + 1;
  }
  struct dp *pl = &plans[k];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) { fprintf(stderr, "tardigrade-restore: cannot open the restore plan %s: %s\n", path, strerror(errno)); return -1; }
  struct stat st;
  if (fstat(fd, &st) != 0) { close(fd); return bad(path, "fstat failed (%llu)", (unsigned long long)errno); }
  if ((uint64_t)st.st_size < sizeof pl->h || st.st_size > (1ll << 31)) { close(fd); return bad(path, "size %llu out of range", (unsigned long long)st.st_size); }
  size_t len = (size_t)st.st_size;
  unsigned char *buf = malloc(len);
  if (!buf) { close(fd); return bad(path, "out of memory (%llu bytes)", (unsigned long long)len); }
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { close(fd); return bad(path, "short read at %llu", (unsigned long long)got); }
    got += (size_t)r;
  }
  close(fd);
  memcpy(&pl->h, buf, sizeof pl->h);
  struct tg_dp_header *h = &pl->h;
  if (memcmp(h->magic, TG_DP_MAGIC, 8) != 0) return bad(path, "bad magic%llu", 0);
  if (h->version != TG_DP_VERSION) return bad(path, "unsupported version %llu", h->version);
  uint32_t want = h->crc;
  ((struct tg_dp_header *)buf)->crc = 0;
  if (tg_crc32c(0, buf, len) != want) return bad(path, "CRC mismatch%llu", 0);
  uint64_t paths_pad = ((uint64_t)h->paths_len + 7) & ~7ull;
  if (h->npacks > TG_DP_MAX_PACKS || h->nblocks > (1ull << 24) || h->npieces > (1ull << 26) ||
      sizeof *h + paths_pad + h->nblocks * sizeof(struct tg_dp_block) + h->npieces * sizeof(struct tg_dp_piece) != len)
    return bad(path, "sizes do not add up to the file's %llu bytes", (unsigned long long)len);
  pl->paths = calloc(h->npacks + 1, sizeof *pl->paths);
  if (!pl->paths) return bad(path, "out of memory%llu", 0);
  const char *s = (const char *)buf + sizeof *h, *end = s + h->paths_len;
  for (uint32_t i = 0; i < h->npacks; i++) {
    const char *z = memchr(s, 0, (size_t)(end - s));
    if (!z || z == s || s[0] != '/') return bad(path, "pack path %llu is missing, empty or relative", i);
    pl->paths[i] = (char *)s;
    s = z + 1;
  }
  pl->blocks = (struct tg_dp_block *)(buf + sizeof *h + paths_pad);
  pl->pieces = (struct tg_dp_piece *)(pl->blocks + h->nblocks);
  for (uint64_t i = 0; i < h->nblocks; i++) {
    const struct tg_dp_block *b = &pl->blocks[i];
    if (b->pack >= h->npacks || b->npages == 0 || b->npages > 256 || b->offset < TG_DP_BLOCK_HEADER || b->npieces == 0 ||
        b->first_piece > h->npieces || b->npieces > h->npieces - b->first_piece)
      return bad(path, "block %llu is malformed", i);
    for (uint32_t k = 0; k < b->npieces; k++) {
      const struct tg_dp_piece *pc = &pl->pieces[b->first_piece + k];
      if (pc->count == 0 || pc->index >= b->npages || pc->count > b->npages - pc->index || (pc->addr & 4095) ||
          pc->addr + (uint64_t)pc->count * 4096 < pc->addr)
        return bad(path, "a piece of block %llu is malformed", i);
    }
  }
  pl->loaded = 1;
  return 0; /* buf stays: the paths, blocks and pieces point into it */
}

static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t tg_direct_blob_size(size_t k) {
  if (k >= nplans || !plans[k].loaded) return 0;
  const struct dp *pl = &plans[k];
  return al64(sizeof(struct tg_dp_blob)) + al64(pl->h.nblocks * sizeof(struct tg_dp_block)) + al64(pl->h.npieces * sizeof(struct tg_dp_piece)) +
         al64(pl->h.npacks * sizeof(int32_t)) + al64(TG_DP_BLOCK_HEADER + 256 * 4096);
}

struct tg_dp_blob *tg_direct_to_blob(size_t k, char *at, char *blob, int fd_floor, uint64_t *fn, char *err, size_t errlen) {
  *fn = 0;
  if (k >= nplans || !plans[k].loaded) return NULL;
  const struct dp *pl = &plans[k];
  struct tg_dp_blob *d = (struct tg_dp_blob *)at;
  char *p = at + al64(sizeof *d);
  d->nblocks = pl->h.nblocks;
  d->blocks = (struct tg_dp_block *)p;
  memcpy(p, pl->blocks, pl->h.nblocks * sizeof(struct tg_dp_block));
  p += al64(pl->h.nblocks * sizeof(struct tg_dp_block));
  d->pieces = (struct tg_dp_piece *)p;
  memcpy(p, pl->pieces, pl->h.npieces * sizeof(struct tg_dp_piece));
  p += al64(pl->h.npieces * sizeof(struct tg_dp_piece));
  d->fds = (int32_t *)p;
  p += al64(pl->h.npacks * sizeof(int32_t));
  d->scratch = (unsigned char *)p;
  const char *uf = getenv("TARDIGRADE_RESTORE_UFFD");
  d->no_uffd = uf && strcmp(uf, "0") == 0;
  for (uint32_t i = 0; i < pl->h.npacks; i++) {
    int fd = open(pl->paths[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      snprintf(err, errlen, "cannot open the store's pack file %s: %s", pl->paths[i], strerror(errno));
      return NULL;
    }
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, fd_floor);
    if (hi < 0) {
      snprintf(err, errlen, "fcntl(F_DUPFD) for %s: %s", pl->paths[i], strerror(errno));
      close(fd);
      return NULL;
    }
    close(fd);
    d->fds[i] = hi;
  }
  *fn = (uint64_t)(blob + ((char *)tg_direct_read - __start_tgblob));
  return d;
}

int tg_direct_plan(size_t k, uint32_t *npacks, char ***paths, uint64_t *nblocks, struct tg_dp_block **blocks, struct tg_dp_piece **pieces) {
  if (k >= nplans || !plans[k].loaded) return -1;
  *npacks = plans[k].h.npacks;
  *paths = plans[k].paths;
  *nblocks = plans[k].h.nblocks;
  *blocks = plans[k].blocks;
  *pieces = plans[k].pieces;
  return 0;
}
