/* Objects of a process tree's fd tables that two processes hold: made once by the restorer's init,
 * before the tree is cloned, and inherited by every process, which takes its own fds from them
 * (fds.c asks tg_tree_premade_fd before it makes anything itself).
 *
 * Three cases: an open file description shared through fork (the daemon found the groups with kcmp
 * and passes them as --shared PID:FD,PID:FD,...: one description, one offset, made once), a
 * Unix socket whose peer is in another process (a socketpair split by fork: the pair is made once,
 * each process takes its end), and a TCP connection whose other end is in another process
 * (loopback: both ends made with TCP_REPAIR, then out of repair, before any process runs). Every record of the tree goes into one table, so the kinds' own
 * open functions find a peer in any process. Pipes have their own way (restore.c,
 * make_shared_pipes). */
#include "restore.h"
#include "../agent/files-deleted.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct member { int pid; uint32_t fd; };
struct group { struct member *m; size_t n; };
static struct group *groups;
static size_t ngroups;

struct premade { int pid; uint32_t fd; int hfd; };
static struct premade *premade;
static size_t npremade;

int tg_tree_shared_arg(const char *arg) {
  size_t n = 1;
  for (const char *c = arg; *c; c++) n += *c == ',';
  struct group g = {calloc(n, sizeof(struct member)), 0};
  struct group *ng = realloc(groups, (ngroups + 1) * sizeof *groups);
  if (!g.m || !ng) return -1;
  groups = ng;
  for (const char *c = arg; *c;) {
    int pid, used = 0;
    unsigned fd;
    if (sscanf(c, "%d:%u%n", &pid, &fd, &used) != 2 || pid < 1) return -1;
    g.m[g.n++] = (struct member){pid, fd};
    c += used;
    if (*c == ',') c++;
    else if (*c) return -1;
  }
  if (g.n < 2) return -1;
  groups[ngroups++] = g;
  return 0;
}

static const struct tg_fd_ops *owner(uint32_t kind) {
  if (tg_fd_file_deleted.owns(kind)) return &tg_fd_file_deleted; /* agent/files-deleted.c */
  for (const struct tg_fd_ops *const *k = tg_fd_kinds; *k; k++) if ((*k)->owns(kind)) return *k;
  return NULL;
}

/* The whole tree's records in one table; owner pid of each. */
static struct tg_fd_restore all;
static int *pid_of;

static long index_of(int pid, uint32_t fd) {
  for (size_t i = 0; i < all.nfds; i++) if (pid_of[i] == pid && all.fds[i].r.fd == fd && !all.fds[i].r.reserved) return (long)i;
  return -1;
}

static int make(size_t i, char *err, size_t errlen) {
  const struct tg_fd_ops *k = owner(all.fds[i].r.kind);
  if (!k) { snprintf(err, errlen, "pid %d fd %u: unknown kind %u in image", pid_of[i], all.fds[i].r.fd, all.fds[i].r.kind); return -1; }
  if (k->open(&all, i, err, errlen) != 0) {
    size_t l = strlen(err);
    if (l + 40 < errlen) snprintf(err + l, errlen - l, " (pid %d, made before the tree)", pid_of[i]);
    return -1;
  }
  return 0;
}

int tg_tree_premake(const struct image *const *imgs, size_t nimgs, int tmp_base, char *err, size_t errlen) {
  size_t nf = 0, ns = 0, nr = 0;
  for (size_t k = 0; k < nimgs; k++) nf += imgs[k]->nfds, ns += imgs[k]->nsocks, nr += imgs[k]->nrepairs;
  all = (struct tg_fd_restore){calloc(nf ? nf : 1, sizeof(struct img_fd)), 0, NULL, 0, calloc(ns ? ns : 1, sizeof(struct img_sockdata)), 0,
                               calloc(nf ? nf : 1, sizeof(int)), tmp_base, tg_stdio_log, NULL, 0, NULL, 0, NULL, 0, NULL, 0};
  pid_of = calloc(nf ? nf : 1, sizeof *pid_of);
  struct img_inet_repair *repairs = calloc(nr ? nr : 1, sizeof *repairs);
  uint64_t *paired = calloc(nf ? nf : 1, sizeof *paired);
  if (!all.fds || !all.socks || !all.tmp || !pid_of || !repairs || !paired) { snprintf(err, errlen, "out of memory"); return -1; }
  all.repairs = repairs;
  for (size_t k = 0; k < nimgs; k++) {
    for (size_t i = 0; i < imgs[k]->nfds; i++) {
      pid_of[all.nfds] = (int)imgs[k]->proc.pid;
      all.tmp[all.nfds] = -1;
      all.fds[all.nfds++] = imgs[k]->fds[i];
    }
    for (size_t i = 0; i < imgs[k]->nrepairs; i++) repairs[all.nrepairs++] = imgs[k]->repairs[i];
    /* a socket held by two processes had its queue recorded by each: once is what it held */
    for (size_t i = 0; i < imgs[k]->nsocks; i++) {
      int seen = 0;
      for (size_t j = 0; j < all.nsocks; j++) seen |= all.socks[j].h.ino == imgs[k]->socks[i].h.ino;
      if (!seen) all.socks[all.nsocks++] = imgs[k]->socks[i];
    }
  }
  /* 0. TCP connections with their two ends in two processes: both made, then out of repair mode
   * (resources/inet.c); a planned restore's --keep-connections no longer concerns them */
  size_t npaired = 0;
  if (tg_inet_tree_pairs(&all, pid_of, paired, &npaired, err, errlen) != 0) return -1;
  for (size_t k = 0; k < npaired; k++)
    for (size_t c = 0; c < tg_nkeep_conns; c++)
      if (tg_keep_conns[c] == paired[k]) tg_keep_conns[c--] = tg_keep_conns[--tg_nkeep_conns];
  free(paired);
  /* 1. each shared description, once */
  for (size_t g = 0; g < ngroups; g++) {
    long first = -1, made = 0;
    for (size_t m = 0; m < groups[g].n; m++) {
      long i = index_of(groups[g].m[m].pid, groups[g].m[m].fd);
      if (i < 0) {
        snprintf(err, errlen, "--shared names fd %u of pid %d, which no image has", groups[g].m[m].fd, groups[g].m[m].pid);
        return -1;
      }
      if (first < 0) first = i;
      made |= all.tmp[i] >= 0;
    }
    if (!made && make((size_t)first, err, errlen) != 0) return -1;
  }
  /* 2. Unix sockets whose peer is in another process: the pair. A socket two processes hold (its
   * description inherited through fork: one inode, one description) is made once: a second pair
   * made for it would take its peer's end away from the first (python's multiprocessing Manager:
   * a worker inherits the parent's connection to the manager process) */
  for (size_t i = 0; i < all.nfds; i++) {
    uint64_t ino, peer;
    if (all.fds[i].r.reserved || all.tmp[i] >= 0 || tg_unix_ids(&all.fds[i], &ino, &peer) != 0) continue;
    int local = 0, same = -1;
    for (size_t j = 0; j < all.nfds; j++) {
      uint64_t ji, jp;
      if (tg_unix_ids(&all.fds[j], &ji, &jp) != 0) continue;
      if (pid_of[j] == pid_of[i] && ji == peer) local = 1;
      if (j != i && ji == ino && all.tmp[j] >= 0 && same < 0) same = all.tmp[j];
    }
    if (same >= 0) all.tmp[i] = same;
    else if (!local && make(i, err, errlen) != 0) return -1;
  }
  /* 3. every member of a group takes what was made for one of them */
  for (size_t g = 0; g < ngroups; g++) {
    int fd = -1;
    for (size_t m = 0; m < groups[g].n && fd < 0; m++) fd = all.tmp[index_of(groups[g].m[m].pid, groups[g].m[m].fd)];
    for (size_t m = 0; m < groups[g].n; m++) {
      long i = index_of(groups[g].m[m].pid, groups[g].m[m].fd);
      if (all.tmp[i] < 0) all.tmp[i] = fd;
    }
  }
  premade = calloc(all.nfds ? all.nfds : 1, sizeof *premade);
  if (!premade) { snprintf(err, errlen, "out of memory"); return -1; }
  for (size_t i = 0; i < all.nfds; i++)
    if (all.tmp[i] >= 0) premade[npremade++] = (struct premade){pid_of[i], all.fds[i].r.fd, all.tmp[i]};
  return 0;
}

int tg_tree_premade_fd(int pid, uint32_t fd) {
  for (size_t i = 0; i < npremade; i++) if (premade[i].pid == pid && premade[i].fd == fd) return premade[i].hfd;
  return -1;
}

void tg_tree_close_premade(void) {
  for (size_t i = 0; i < npremade; i++) {
    int dup_of_earlier = 0;
    for (size_t j = 0; j < i; j++) dup_of_earlier |= premade[j].hfd == premade[i].hfd;
    if (!dup_of_earlier) close(premade[i].hfd);
  }
}
