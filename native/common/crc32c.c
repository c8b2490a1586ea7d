#include "crc32c.h"
#include <nmmintrin.h>

/* SSE4.2 crc32 instruction; every x86-64 CPU tardigrade targets has it (checked at build time by -msse4.2
 * and at load time by the agent/restorer through __builtin_cpu_supports). */
__attribute__((target("sse4.2")))
uint32_t tg_crc32c(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint64_t c = ~crc;
  while (len && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); len--; }
  /* three independent streams would be faster; one stream gives ~8 GB/s here, enough */
  while (len >= 8) { c = _mm_crc32_u64(c, *(const uint64_t *)p); p += 8; len -= 8; }
  while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return ~(uint32_t)c;
}
