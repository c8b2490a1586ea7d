/* Helpers shared by the resource kinds (resource.h). */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void tg_res_file_id(const struct stat *st, struct tg_file_id *id) {
  id->dev = st->st_dev;
  id->ino = st->st_ino;
  id->size = (uint64_t)st->st_size;
  id->mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
  id->mode = st->st_mode;
  id->reserved = 0;
}

const char *tg_res_field(const char *info, const char *key) {
  const char *p = strstr(info, key);
  return p ? p + strlen(key) : NULL;
}

int tg_res_high(int fd, int tmp_base, char *err, size_t errlen) {
  if (fd < 0) return -1;
  int h = fcntl(fd, F_DUPFD_CLOEXEC, tmp_base);
  if (h < 0) snprintf(err, errlen, "fcntl(F_DUPFD): %s", strerror(errno));
  close(fd);
  return h;
}

int tg_res_status_flags(uint32_t open_flags) {
  return (int)(open_flags & (O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME));
}

TG_RES_HIDDEN int tg_res_tree;
TG_RES_HIDDEN int tg_res_ext_unix_closed;
