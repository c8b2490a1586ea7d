#ifndef TG_CRC32C_H
#define TG_CRC32C_H
#include <stddef.h>
#include <stdint.h>
/* CRC-32C (Castagnoli), as in docs/format.md: crc32c_update(0, "123456789", 9) == 0xE3069283.
 * Pass the previous return value to continue a running checksum. */
__attribute__((visibility("hidden"))) uint32_t tg_crc32c(uint32_t crc, const void *buf, size_t len);
#endif
