/* CRC-32C (Castagnoli) over three interleaved streams: the crc32 instruction takes 3 cycles and
 * can start one every cycle, so one stream runs at a third of what the CPU can do (~8 GB/s here
 * against ~20). A buffer is cut in three equal parts, each checksummed on its own in one loop,
 * and the three joined with the CRC's linear algebra: crc(A || B) = crc(A) * x^(8 |B|) + crc(B)
 * modulo the polynomial (the pre- and post-inversions cancel out). Same result as tg_crc32c
 * (crc32c.c) for every input; header-only and always inlined, for the restorer's blob, which may
 * call nothing outside its own section (restore/check-blob.sh). */
#ifndef TG_CRC32C_FAST_H
#define TG_CRC32C_FAST_H
#include <stddef.h>
#include <stdint.h>

#define TG_CRC32C_INLINE static inline __attribute__((always_inline))
#define TG_CRC32C_POLY 0x82f63b78u /* reflected */

/* a * b modulo the polynomial (reflected bit order: x^0 is bit 31) */
TG_CRC32C_INLINE uint32_t tg_crc32c_mulmod(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ TG_CRC32C_POLY : b >> 1;
  }
  return p;
}

/* x^(8 n) modulo the polynomial: what crc(A) is multiplied by when n bytes follow A */
TG_CRC32C_INLINE uint32_t tg_crc32c_xpow8n(uint64_t n) {
  uint32_t p = 1u << 31;  /* x^0 */
  uint32_t sq = 1u << 30; /* x^(2^k), from x^1 */
  for (uint64_t e = n << 3; e; e >>= 1) {
    if (e & 1) p = tg_crc32c_mulmod(sq, p);
    sq = tg_crc32c_mulmod(sq, sq);
  }
  return p;
}

/* one stream: the running (inverted) register c over len bytes at p */
TG_CRC32C_INLINE uint64_t tg_crc32c_run(uint64_t c, const unsigned char *p, size_t len) {
  while (len && ((uintptr_t)p & 7)) { __asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p)); p++; len--; }
  while (len >= 8) { __asm__("crc32q %1, %0" : "+r"(c) : "rm"(*(const uint64_t *)p)); p += 8; len -= 8; }
  while (len--) { __asm__("crc32b %1, %k0" : "+r"(c) : "rm"(*p)); p++; }
  return c;
}

/* The multiplier of the last part length, kept by the caller across calls (blocks of one size). */
struct tg_crc32c_k {
  uint64_t part;
  uint32_t k;
};

/* crc32c continuing `crc` over len bytes at buf (as tg_crc32c(crc, buf, len)) */
TG_CRC32C_INLINE uint32_t tg_crc32c_3way(uint32_t crc, const void *buf, size_t len, struct tg_crc32c_k *cache) {
  const unsigned char *p = buf;
  if (len < 3 * 1024) return ~(uint32_t)tg_crc32c_run((uint32_t)~crc, p, len);
  uint64_t head = (8 - ((uintptr_t)p & 7)) & 7;
  uint64_t c0 = tg_crc32c_run((uint32_t)~crc, p, head);
  p += head;
  len -= head;
  size_t part = (len / 3) & ~(size_t)7;
  const uint64_t *a = (const uint64_t *)p, *b = (const uint64_t *)(p + part), *d = (const uint64_t *)(p + 2 * part);
  uint64_t c1 = 0xffffffffu, c2 = 0xffffffffu;
  for (size_t i = 0; i < part / 8; i++) {
    __asm__("crc32q %1, %0" : "+r"(c0) : "rm"(a[i]));
    __asm__("crc32q %1, %0" : "+r"(c1) : "rm"(b[i]));
    __asm__("crc32q %1, %0" : "+r"(c2) : "rm"(d[i]));
  }
  if (cache->part != part) {
    cache->part = part;
    cache->k = tg_crc32c_xpow8n(part);
  }
  uint32_t r = tg_crc32c_mulmod(cache->k, ~(uint32_t)c0) ^ ~(uint32_t)c1;
  r = tg_crc32c_mulmod(cache->k, r) ^ ~(uint32_t)c2;
  return ~(uint32_t)tg_crc32c_run((uint32_t)~r, p + 3 * part, len - 3 * part);
}

#endif
