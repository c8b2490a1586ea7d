#include "sysvshm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/shm.h>
#include <unistd.h>

#include "readfile.h"
#include "sys.h"

/* One line of /proc/sysvipc/shm: key shmid perms(octal) size cpid lpid nattch uid gid ... */
static const char *num(const char *p, int base, long long *v) {
  while (*p == ' ' || *p == '\t') p++;
  int neg = *p == '-';
  if (neg) p++;
  if (!(*p >= '0' && *p <= '9')) return NULL;
  long long x = 0;
  while (*p >= '0' && *p <= '9') x = x * base + (*p++ - '0');
  *v = neg ? -x : x;
  return p;
}

static char list[256 << 10];

int tg_sysv_shm_find(int32_t id, struct tg_sysv_shm *out) {
  long n = tg_read_file("/proc/sysvipc/shm", list, sizeof list);
  if (n < 0) return (int)n;
  if ((size_t)n + 1 >= sizeof list) return 1; /* too many segments to list here: not found */
  const char *p = strchr(list, '\n'); /* the header */
  while (p && *++p) {
    long long f[9];
    const char *q = p;
    int ok = 1;
    for (int i = 0; i < 9 && ok; i++) ok = (q = num(q, i == 2 ? 8 : 10, &f[i])) != NULL;
    if (ok && f[1] == id) {
      *out = (struct tg_sysv_shm){(int32_t)f[0], (int32_t)f[1], (uint32_t)f[2], (uint32_t)f[7], (uint32_t)f[8], (uint64_t)f[3]};
      return 0;
    }
    p = strchr(p, '\n');
  }
  return 1;
}

/* A segment left by the killed app (nobody attached, same key) is removed: its contents are the
 * dead process's, newer than the checkpoint's. One somebody has attached fails the restore. */
static int clear(int id, const struct tg_sysv_shm *s, int by_key, char *err, size_t errlen) {
  struct shmid_ds ds;
  if (shmctl(id, IPC_STAT, &ds) != 0) return 0; /* gone meanwhile */
  if (!by_key && ds.shm_perm.__key != s->key) return 0; /* another segment took the id: the new one gets another */
  if (ds.shm_nattch > 0) {
    snprintf(err, errlen, "System V shared memory segment key 0x%08x (id %d) is attached by %lu process(es) now; stop them (ipcs -m -p) and restore again",
             (unsigned)s->key, id, (unsigned long)ds.shm_nattch);
    return -1;
  }
  if (shmctl(id, IPC_RMID, NULL) != 0 && errno != EINVAL && errno != EIDRM) {
    snprintf(err, errlen, "System V shared memory segment key 0x%08x (id %d), left by the killed app: IPC_RMID: %s", (unsigned)s->key, id, strerror(errno));
    return -1;
  }
  return 0;
}

static void next_id(int id) {
  int fd = open("/proc/sys/kernel/shm_next_id", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return; /* no such knob: the kernel picks the id */
  char b[16];
  int l = snprintf(b, sizeof b, "%d", id);
  if (write(fd, b, (size_t)l) != l) {} /* not fatal either: the id is a wish */
  close(fd);
}

int tg_sysv_shm_make(const struct tg_sysv_shm *s, char *err, size_t errlen) {
  if (s->key != IPC_PRIVATE) {
    int old = shmget(s->key, 0, 0);
    if (old >= 0 && clear(old, s, 1, err, errlen) != 0) return -1;
  }
  if (clear(s->id, s, 0, err, errlen) != 0) return -1;
  next_id(s->id);
  int id = shmget(s->key, s->size, IPC_CREAT | IPC_EXCL | (int)(s->mode & 0777));
  if (id < 0) {
    int e = errno;
    next_id(-1);
    snprintf(err, errlen, "System V shared memory segment key 0x%08x of %llu bytes: shmget: %s", (unsigned)s->key, (unsigned long long)s->size, strerror(e));
    return -1;
  }
  struct shmid_ds ds;
  if (shmctl(id, IPC_STAT, &ds) != 0) {
    snprintf(err, errlen, "System V shared memory segment key 0x%08x: IPC_STAT: %s", (unsigned)s->key, strerror(errno));
    return -1;
  }
  ds.shm_perm.uid = s->uid;
  ds.shm_perm.gid = s->gid;
  ds.shm_perm.mode = s->mode & 0777;
  if (shmctl(id, IPC_SET, &ds) != 0) {
    snprintf(err, errlen, "System V shared memory segment key 0x%08x: IPC_SET (owner %u:%u, mode %o): %s", (unsigned)s->key, s->uid, s->gid, s->mode & 0777, strerror(errno));
    return -1;
  }
  return id;
}
