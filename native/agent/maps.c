/* /proc/self/maps lines, parsed without allocating (the snapshot child and the park handler use it). */
#include "agent.h"

#include <string.h>

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
