/* Direct page reads for a restore (issue 15): the daemon hands tardigrade-restore a plan (--direct FILE)
 * listing stored raw blocks ("TGBR" blocks of the store's pack files, docs/store.md) and where their pages
 * go; the blob reads each block from its pack file, checks its header and CRC-32C, and copies its pages
 * into the application's memory, instead of the page data passing through the daemon and the image stream. Pages that
 * are not in the plan (compressed blocks, zero pages of file mappings) still come in the image's PAGES
 * records; zero pages of anonymous mappings come from neither (a fresh anonymous mapping reads zeros).
 *
 * Plan file (little-endian), docs/store.md "Restore plan":
 *   header   struct tg_dp_header
 *   paths    npacks NUL-terminated pack file paths, paths_len bytes, zero-padded to a multiple of 8
 *   blocks   nblocks x struct tg_dp_block, in the order they are read (pack, then offset)
 *   pieces   npieces x struct tg_dp_piece; block i owns pieces [first_piece, first_piece + npieces)
 * crc is the CRC-32C of the whole file with the crc field zero. */
#ifndef TG_PAGES_DIRECT_H
#define TG_PAGES_DIRECT_H
#include <stddef.h>
#include <stdint.h>

#define TG_DP_MAGIC "TGDPLAN"
#define TG_DP_VERSION 1
#define TG_DP_BLOCK_HEADER 16 /* the store's block header: u32 magic, npages, data length, CRC-32C */
#define TG_DP_RAW_MAGIC 0x52424754u /* "TGBR": pages stored as they are */
#define TG_DP_MAX_PACKS 4096

struct tg_dp_header {
  char magic[8];
  uint32_t version, npacks;
  uint64_t nblocks, npieces;
  uint32_t paths_len, crc;
};

struct tg_dp_block {
  uint64_t offset; /* of the block header in its pack file */
  uint32_t pack;   /* index into the paths */
  uint32_t npages; /* pages in the block (1..256) */
  uint32_t first_piece, npieces;
};

struct tg_dp_piece {
  uint64_t addr;   /* where page `index` of the block goes in the application */
  uint32_t index;  /* first page of the run within the block */
  uint32_t count;  /* pages in the run */
};

/* What the blob gets (inside the blob mapping). */
struct tg_dp_blob {
  uint64_t nblocks;
  struct tg_dp_block *blocks;
  struct tg_dp_piece *pieces;
  int32_t *fds;        /* per pack, opened by stage 1 above the application's fds */
  unsigned char *scratch; /* TG_DP_BLOCK_HEADER + 256 pages: each block is read and checked there, then copied into place */
  uint64_t no_uffd;       /* TARDIGRADE_RESTORE_UFFD=0: fill by MADV_POPULATE_WRITE + copy only (see docs/store.md) */
  uint64_t lazy;          /* restore --lazy (lazy.h): register, place only what the server cannot serve */
};

/* pages-direct.c, in tardigrade-restore's main: reads and checks the plan before anything is created.
 * 0, or -1 with the reason printed. */
int tg_direct_load(size_t k, const char *path);
/* Stage 1: bytes the blob mapping needs for the plan (0 without one). */
size_t tg_direct_blob_size(size_t k);
/* Stage 1: opens the pack files (close-on-exec, at or above fd_floor) and copies the plan to `at`
 * inside the blob mapping, whose copy starts at `blob` (the section's code is at its start). Returns the
 * struct tg_dp_blob * and sets *fn to the blob's reader (tg_direct_read's address in the copy); on
 * failure writes err and returns NULL. */
struct tg_dp_blob *tg_direct_to_blob(size_t k, char *at, char *blob, int fd_floor, uint64_t *fn, char *err, size_t errlen);

/* The loaded plan k (for the lazy page server, lazy.c): 0, or -1 if there is none. */
int tg_direct_plan(size_t k, uint32_t *npacks, char ***paths, uint64_t *nblocks, struct tg_dp_block **blocks, struct tg_dp_piece **pieces);

/* pages-direct-blob.c, stage 2 (section tgblob): reads every block of the plan into place. */
struct blob_plan;
void tg_direct_read(struct blob_plan *p);
#endif
