/* Rebuilds the application's fd table from the image's FD records and the data records that go
 * with them (PIPE_DATA, SOCKET_DATA): the restore side of native/agent/fds.c. Each record is made
 * by the resource kind that owns it (native/resources/) at a temporary high fd, then every fd is
 * moved into place (so that making one never lands on a number another still needs), then the
 * kinds that need the others in place settle (epoll interest lists). */
#include "restore.h"
#include "../agent/files-deleted.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tg_stdio_log;
struct tg_shared_pipe *tg_shared_pipes;
size_t tg_nshared_pipes;
uint64_t *tg_keep_conns;
size_t tg_nkeep_conns;

static const struct tg_fd_ops *owner(uint32_t kind) {
  if (tg_fd_file_deleted.owns(kind)) return &tg_fd_file_deleted; /* agent/files-deleted.c */
  for (const struct tg_fd_ops *const *k = tg_fd_kinds; *k; k++) if ((*k)->owns(kind)) return *k;
  return NULL;
}

int tg_restore_fds(struct image *img, char *err, size_t errlen) {
  int tmp_base = 0;
  for (size_t i = 0; i < img->nfds; i++) if ((int)img->fds[i].r.fd >= tmp_base) tmp_base = (int)img->fds[i].r.fd + 1;
  tmp_base += 1;
  int *tmp = calloc(img->nfds ? img->nfds : 1, sizeof *tmp);
  if (!tmp) { snprintf(err, errlen, "out of memory"); return -1; }
  for (size_t i = 0; i < img->nfds; i++) tmp[i] = -1;
  struct tg_fd_restore rc = {img->fds, img->nfds, img->pipes, img->npipes, img->socks, img->nsocks, tmp, tmp_base, tg_stdio_log,
                            tg_shared_pipes, tg_nshared_pipes, img->locks, img->nlocks, img->repairs, img->nrepairs, tg_keep_conns, tg_nkeep_conns};
  int ret = -1;
  /* made by the init for the whole tree (tree-fds.c): this process's copy */
  for (size_t i = 0; i < img->nfds; i++) {
    const struct tg_rec_fd *r = &img->fds[i].r;
    int h = r->reserved ? -1 : tg_tree_premade_fd((int)img->proc.pid, r->fd);
    if (h < 0) continue;
    tmp[i] = fcntl(h, F_DUPFD_CLOEXEC, tmp_base);
    if (tmp[i] < 0) { snprintf(err, errlen, "fd %u: taking the tree's copy: %s", r->fd, strerror(errno)); goto out; }
  }
  for (size_t i = 0; i < img->nfds; i++) {
    const struct tg_rec_fd *r = &img->fds[i].r;
    if (r->reserved || tmp[i] >= 0) continue; /* a dup of an earlier fd, or made already */
    const struct tg_fd_ops *k = owner(r->kind);
    if (!k) { snprintf(err, errlen, "fd %u: unknown kind %u in image", r->fd, r->kind); goto out; }
    if (k->open(&rc, i, err, errlen) != 0) goto out;
  }
  /* into place */
  for (size_t i = 0; i < img->nfds; i++) {
    const struct tg_rec_fd *r = &img->fds[i].r;
    int src = tmp[i];
    if (r->reserved) src = (int)r->reserved - 1; /* already in place: fds come in ascending order */
    if (src < 0) { snprintf(err, errlen, "fd %u: nothing was created for it", r->fd); goto out; }
    if (dup3(src, (int)r->fd, (r->fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
      snprintf(err, errlen, "fd %u: dup3: %s", r->fd, strerror(errno));
      goto out;
    }
  }
  for (size_t i = 0; i < img->nfds; i++) if (tmp[i] >= 0) close(tmp[i]);
  for (size_t i = 0; i < img->nfds; i++) tmp[i] = -1;
  for (size_t i = 0; i < img->nfds; i++) {
    const struct tg_rec_fd *r = &img->fds[i].r;
    const struct tg_fd_ops *k = owner(r->kind);
    if (!r->reserved && k->settle && k->settle(&rc, i, err, errlen) != 0) goto out;
  }
  ret = 0;
out:
  for (size_t i = 0; i < img->nfds; i++) if (tmp[i] >= 0) close(tmp[i]);
  free(tmp);
  return ret;
}
