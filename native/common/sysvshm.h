/* System V shared memory segments (docs/engine.md, "SysV shared memory"): what the agent records of
 * one (found in /proc/sysvipc/shm by its id, which is the inode of its mapping) and how the restorer
 * makes it again (same key, id when free, mode, owner). */
#ifndef TG_SYSVSHM_H
#define TG_SYSVSHM_H
#include <stddef.h>
#include <stdint.h>

struct tg_sysv_shm {
  int32_t key, id;
  uint32_t mode; /* permission bits and SHM_DEST (01000) as /proc/sysvipc/shm shows them */
  uint32_t uid, gid;
  uint64_t size;
};

/* Capture (raw syscalls, static memory): 0 found, 1 no such segment (or the list did not fit), -errno. */
__attribute__((visibility("hidden"))) int tg_sysv_shm_find(int32_t id, struct tg_sysv_shm *out);

/* Restore: makes the segment again (a leftover of the killed app with the same key, or at the same
 * id with the same key, attached by nobody, is removed first). Returns the new id, or -1 with err. */
__attribute__((visibility("hidden"))) int tg_sysv_shm_make(const struct tg_sysv_shm *s, char *err, size_t errlen);
#endif
