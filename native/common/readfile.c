#include "readfile.h"

#include <errno.h>
#include <fcntl.h>

#include "sys.h"

long tg_read_file(const char *path, char *buf, size_t cap) {
  long fd = tg_sys3(SYS_open, path, O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return fd;
  size_t n = 0;
  while (n + 1 < cap) {
    long r = tg_sys3(SYS_read, fd, buf + n, cap - 1 - n);
    if (r == -EINTR) continue;
    if (r < 0) { tg_sys1(SYS_close, fd); return r; }
    if (r == 0) break;
    n += (size_t)r;
  }
  buf[n] = 0;
  tg_sys1(SYS_close, fd);
  return (long)n;
}
