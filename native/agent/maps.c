/* /proc/self/maps lines, parsed without allocating (the snapshot child and the park handler use it). */
#include "agent.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/sys.h"

static uint64_t hex(const char **pp) {
  const char *p = *pp;
  uint64_t v = 0;
  for (;; p++) {
    int d;
    if (*p >= '0' && *p <= '9') d = *p - '0';
    else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
    else break;
    v = v * 16 + (uint64_t)d;
  }
  *pp = p;
  return v;
}

TG_HIDDEN int tg_parse_maps_line(const char *l, const char *end, struct tg_vma *v) {
  const char *p = l;
  v->start = hex(&p);
  if (*p++ != '-') return -1;
  v->end = hex(&p);
  if (*p++ != ' ') return -1;
  v->prot = (p[0] == 'r' ? 1u : 0u) | (p[1] == 'w' ? 2u : 0u) | (p[2] == 'x' ? 4u : 0u);
  v->shared = p[3] == 's';
  p += 5;
  v->pgoff = hex(&p);
  p++;
  v->devmaj = (uint32_t)hex(&p);
  p++;
  v->devmin = (uint32_t)hex(&p);
  p++;
  v->ino = 0;
  while (*p >= '0' && *p <= '9') v->ino = v->ino * 10 + (uint64_t)(*p++ - '0');
  while (p < end && *p == ' ') p++;
  v->path = p;
  v->pathlen = (size_t)(end - p);
  return 0;
}

TG_HIDDEN int tg_vma_path_is(const struct tg_vma *v, const char *s) {
  return v->pathlen == strlen(s) && memcmp(v->path, s, v->pathlen) == 0;
}

TG_HIDDEN int tg_vma_special(const struct tg_vma *v) {
  return tg_vma_path_is(v, "[vdso]") || tg_vma_path_is(v, "[vvar]") || tg_vma_path_is(v, "[vvar_vclock]") ||
         tg_vma_path_is(v, "[vsyscall]");
}

TG_HIDDEN const char *tg_next_line(const char *l, const char *end) {
  const char *e = memchr(l, '\n', (size_t)(end - l));
  return e ? e : end;
}

/* getdents64's record */
struct tg_dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

#define RELINK_SCAN_MAX 100000 /* directory entries looked at, at most */

TG_HIDDEN int tg_vma_relinked(const struct tg_vma *v, char *out, size_t cap) {
  static const char del[] = " (deleted)";
  const size_t dl = sizeof del - 1;
  if (!v->shared || !v->ino || v->pathlen <= dl || v->path[0] != '/') return 0;
  if (memcmp(v->path + v->pathlen - dl, del, dl) != 0) return 0;
  size_t n = v->pathlen - dl;
  if ((n >= 7 && memcmp(v->path, "/memfd:", 7) == 0) || (n >= 5 && memcmp(v->path, "/SYSV", 5) == 0) ||
      (n >= 9 && memcmp(v->path, "/dev/zero", 9) == 0))
    return 0;
  /* the mapped file itself: still linked somewhere? (map_files needs CAP_SYS_ADMIN or
   * CAP_CHECKPOINT_RESTORE: without them the mapping stays a deleted file's, as before) */
  char mf[80];
  snprintf(mf, sizeof mf, "/proc/self/map_files/%llx-%llx", (unsigned long long)v->start, (unsigned long long)v->end);
  struct stat st;
  if (tg_sys2(SYS_stat, mf, &st) != 0 || st.st_nlink == 0 || !S_ISREG(st.st_mode) || st.st_ino != v->ino) return 0;
  size_t slash = n;
  while (slash > 0 && v->path[slash - 1] != '/') slash--;
  /* slash: the length of the directory's name with its final '/' */
  if (slash == 0 || slash + 2 > cap || slash >= 4096) return 0;
  char dir[4096];
  memcpy(dir, v->path, slash);
  dir[slash] = 0;
  long dfd = tg_sys3(SYS_open, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) return 0;
  int found = 0;
  long seen = 0;
  static char buf[8192];
  for (;;) {
    long got = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf);
    if (got <= 0) break;
    for (long o = 0; o < got && !found;) {
      const struct tg_dirent64 *d = (const struct tg_dirent64 *)(buf + o);
      o += d->d_reclen;
      seen++;
      if (d->d_ino != st.st_ino) continue;
      struct stat s;
      if (tg_sys4(SYS_newfstatat, dfd, d->d_name, &s, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (s.st_dev != st.st_dev || s.st_ino != st.st_ino || !S_ISREG(s.st_mode)) continue;
      size_t nl = strlen(d->d_name);
      if (slash + nl + 1 > cap) break;
      memcpy(out, dir, slash);
      memcpy(out + slash, d->d_name, nl + 1);
      found = 1;
    }
    if (found || seen > RELINK_SCAN_MAX) break;
  }
  tg_sys1(SYS_close, dfd);
  return found;
}
