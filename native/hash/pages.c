/* SHA-256 of each 4 KiB page of a buffer, for the store's ingest (src/store/cas/hash-worker.ts,
 * loaded with koffi). One call hashes a whole PAGES payload: node's crypto costs a call per page
 * (~0.4 CPU-s per GiB of calls alone here). Zero pages get 32 zero bytes (the store's mark), as
 * the JS path does. Uses the SHA extensions (SHA-NI); tg_hash_pages_ok() says whether the CPU
 * has them (otherwise the caller hashes with node's crypto). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PAGE 4096

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

/* Compresses nblocks 64-byte blocks into the state, kept as the two registers the SHA
 * instructions use: abef = (a, b, e, f) and cdgh = (c, d, g, h), highest word first. */
__attribute__((target("sha,sse4.1"))) static void compress(__m128i *abef, __m128i *cdgh, const uint8_t *p, size_t nblocks) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  __m128i s0 = *abef, s1 = *cdgh;
  for (; nblocks; nblocks--, p += 64) {
    __m128i save0 = s0, save1 = s1, w[4];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
      __m128i m;
      if (i < 4) {
        m = w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
      } else {
        /* W[t..t+3] from W[t-16..t-1]: msg1 adds sigma0 of W[t-15..t-12] to W[t-16..t-13], then
         * W[t-7..t-4] is added, and msg2 adds sigma1 of W[t-2], W[t-1] (the last two computed). */
        __m128i a = w[i & 3], b = w[(i + 1) & 3], c = w[(i + 2) & 3], d = w[(i + 3) & 3];
        __m128i x = _mm_add_epi32(_mm_sha256msg1_epu32(a, b), _mm_alignr_epi8(d, c, 4));
        m = w[i & 3] = _mm_sha256msg2_epu32(x, d);
      }
      m = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K[4 * i]));
      s1 = _mm_sha256rnds2_epu32(s1, s0, m);
      s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0e));
    }
    s0 = _mm_add_epi32(s0, save0);
    s1 = _mm_add_epi32(s1, save1);
  }
  *abef = s0;
  *cdgh = s1;
}

/* Two messages at once (same number of blocks): the rounds of one run while the other's wait for
 * their results (sha256rnds2's latency): 0.58 against 0.72-0.78 CPU-s per GiB for one stream here. */
__attribute__((target("sha,sse4.1"))) static void compress2(__m128i st[4], const uint8_t *p, const uint8_t *q, size_t nblocks) {
  const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  __m128i a0 = st[0], a1 = st[1], b0 = st[2], b1 = st[3];
  for (; nblocks; nblocks--, p += 64, q += 64) {
    __m128i sa0 = a0, sa1 = a1, sb0 = b0, sb1 = b1, w[4], v[4];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
      __m128i m, n;
      if (i < 4) {
        m = w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
        n = v[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + 16 * i)), bswap);
      } else {
        __m128i x = _mm_add_epi32(_mm_sha256msg1_epu32(w[i & 3], w[(i + 1) & 3]), _mm_alignr_epi8(w[(i + 3) & 3], w[(i + 2) & 3], 4));
        __m128i y = _mm_add_epi32(_mm_sha256msg1_epu32(v[i & 3], v[(i + 1) & 3]), _mm_alignr_epi8(v[(i + 3) & 3], v[(i + 2) & 3], 4));
        m = w[i & 3] = _mm_sha256msg2_epu32(x, w[(i + 3) & 3]);
        n = v[i & 3] = _mm_sha256msg2_epu32(y, v[(i + 3) & 3]);
      }
      __m128i k = _mm_loadu_si128((const __m128i *)&K[4 * i]);
      m = _mm_add_epi32(m, k);
      n = _mm_add_epi32(n, k);
      a1 = _mm_sha256rnds2_epu32(a1, a0, m);
      b1 = _mm_sha256rnds2_epu32(b1, b0, n);
      a0 = _mm_sha256rnds2_epu32(a0, a1, _mm_shuffle_epi32(m, 0x0e));
      b0 = _mm_sha256rnds2_epu32(b0, b1, _mm_shuffle_epi32(n, 0x0e));
    }
    a0 = _mm_add_epi32(a0, sa0);
    a1 = _mm_add_epi32(a1, sa1);
    b0 = _mm_add_epi32(b0, sb0);
    b1 = _mm_add_epi32(b1, sb1);
  }
  st[0] = a0;
  st[1] = a1;
  st[2] = b0;
  st[3] = b1;
}

/* The last block of a 4096-byte message: 0x80, zeros, the length in bits (32768) big-endian. */
static const uint8_t PAD[64] = {0x80, [62] = 0x80, [63] = 0x00};

__attribute__((target("sha,sse4.1"))) static __m128i init_abef(void) { return _mm_set_epi32((int)H0[0], (int)H0[1], (int)H0[4], (int)H0[5]); }
__attribute__((target("sha,sse4.1"))) static __m128i init_cdgh(void) { return _mm_set_epi32((int)H0[2], (int)H0[3], (int)H0[6], (int)H0[7]); }

/* The digest's bytes from the final state. */
__attribute__((target("sha,sse4.1"))) static void digest(__m128i abef, __m128i cdgh, uint8_t out[32]) {
  uint32_t st[8];
  st[0] = (uint32_t)_mm_extract_epi32(abef, 3);
  st[1] = (uint32_t)_mm_extract_epi32(abef, 2);
  st[4] = (uint32_t)_mm_extract_epi32(abef, 1);
  st[5] = (uint32_t)_mm_extract_epi32(abef, 0);
  st[2] = (uint32_t)_mm_extract_epi32(cdgh, 3);
  st[3] = (uint32_t)_mm_extract_epi32(cdgh, 2);
  st[6] = (uint32_t)_mm_extract_epi32(cdgh, 1);
  st[7] = (uint32_t)_mm_extract_epi32(cdgh, 0);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (uint8_t)(st[i] >> 24);
    out[4 * i + 1] = (uint8_t)(st[i] >> 16);
    out[4 * i + 2] = (uint8_t)(st[i] >> 8);
    out[4 * i + 3] = (uint8_t)st[i];
  }
}

__attribute__((target("sha,sse4.1"))) static void sha256_page(const uint8_t *page, uint8_t out[32]) {
  __m128i abef = init_abef(), cdgh = init_cdgh();
  compress(&abef, &cdgh, page, PAGE / 64);
  compress(&abef, &cdgh, PAD, 1);
  digest(abef, cdgh, out);
}

__attribute__((target("sha,sse4.1"))) static void sha256_two_pages(const uint8_t *p, const uint8_t *q, uint8_t *outp, uint8_t *outq) {
  __m128i st[4] = {init_abef(), init_cdgh(), init_abef(), init_cdgh()};
  compress2(st, p, q, PAGE / 64);
  compress2(st, PAD, PAD, 1);
  digest(st[0], st[1], outp);
  digest(st[2], st[3], outq);
}

static int zero_page(const uint8_t *p) {
  const uint64_t *q = (const uint64_t *)(const void *)p;
  for (size_t i = 0; i < PAGE / 8; i += 8)
    if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7]) return 0;
  return 1;
}

/* 1 if this CPU has the SHA extensions and SSSE3/SSE4.1 (then tg_hash_pages may be called). */
__attribute__((visibility("default"))) int tg_hash_pages_ok(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3");
}

/* out[32 * i ..] = SHA-256 of page i of data (npages pages, data 8-byte aligned), or 32 zero bytes
 * for a page of zeros. Returns the number of zero pages. */
__attribute__((visibility("default"))) uint32_t tg_hash_pages(const uint8_t *data, uint32_t npages, uint8_t *out) {
  uint32_t zeros = 0;
  const uint8_t *held = NULL; /* a non-zero page waiting for a partner */
  uint8_t *held_out = NULL;
  for (uint32_t i = 0; i < npages; i++) {
    const uint8_t *page = data + (size_t)i * PAGE;
    uint8_t *o = out + 32 * (size_t)i;
    if (zero_page(page)) {
      memset(o, 0, 32);
      zeros++;
    } else if (held) {
      sha256_two_pages(held, page, held_out, o);
      held = NULL;
    } else {
      held = page;
      held_out = o;
    }
  }
  if (held) sha256_page(held, held_out);
  return zeros;
}
