/* Unix socket pairs (FD kind 9, SOCKET_DATA): the restore side of native/agent/unix.c. A pair is
 * made again with socketpair at its first end's record; each end gets its buffer sizes back, then
 * the data that was queued for it (written from the other end, datagram by datagram), then its
 * shutdown state and peek offset. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int extra_of(const struct img_fd *f, struct tg_unix_sock *x) {
  if (f->r.extra_len < sizeof *x) return -1;
  memcpy(x, f->extra, sizeof *x);
  return 0;
}

static void set_buf(int fd, int force, int plain, uint32_t v) {
  /* getsockopt gave the doubled value the kernel keeps; set* doubles what it is given */
  int half = (int)(v / 2);
  if (half <= 0) return;
  if (setsockopt(fd, SOL_SOCKET, force, &half, sizeof half) != 0) setsockopt(fd, SOL_SOCKET, plain, &half, sizeof half);
}

/* Writes through `from` what was queued for reading at the other end. */
static int refill(const struct image *img, uint64_t ino, int from, uint32_t fdno, char *err, size_t errlen) {
  for (size_t k = 0; k < img->nsocks; k++) {
    const struct img_sockdata *s = &img->socks[k];
    if (s->h.ino != ino) continue;
    size_t off = 0;
    uint32_t m = 0;
    while (off < s->len) {
      size_t len = s->len - off;
      const char *p = s->data + off;
      if (s->h.type != SOCK_STREAM) {
        uint32_t l32;
        memcpy(&l32, p, 4); /* bounds were checked when the image was read */
        p += 4;
        len = l32;
        off += 4;
        m++;
      }
      size_t w = 0;
      do {
        ssize_t n = send(from, p + w, len - w, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          snprintf(err, errlen, "fd %u: refilling the Unix socket's queue (%zu of %zu bytes%s): %s", fdno, off + w, s->len,
                   s->h.type != SOCK_STREAM ? ", datagram mode" : "", strerror(errno));
          return -1;
        }
        w += (size_t)n;
      } while (w < len);
      off += len;
    }
    if (s->h.type != SOCK_STREAM && m != s->h.nmsg) {
      snprintf(err, errlen, "fd %u: SOCKET_DATA holds %u datagrams, its header says %u", fdno, m, s->h.nmsg);
      return -1;
    }
  }
  return 0;
}

int tg_unix_restore(struct image *img, size_t i, int *tmp, int tmp_base, char *err, size_t errlen) {
  if (tmp[i] >= 0) return 0; /* made with its peer */
  struct img_fd *a = &img->fds[i];
  struct tg_unix_sock xa, xb;
  if (extra_of(a, &xa) != 0) { snprintf(err, errlen, "fd %u: Unix socket record without its socket data", a->r.fd); return -1; }
  size_t j = img->nfds;
  for (size_t k = 0; k < img->nfds; k++) {
    struct img_fd *b = &img->fds[k];
    if (k == i || b->r.kind != TG_FD_UNIX || b->r.reserved) continue;
    if (extra_of(b, &xb) == 0 && xb.ino == xa.peer_ino && xb.peer_ino == xa.ino) { j = k; break; }
  }
  if (j == img->nfds) {
    snprintf(err, errlen, "fd %u: the peer of this Unix socket (socket:[%llu]) is not in the image", a->r.fd, (unsigned long long)xa.peer_ino);
    return -1;
  }
  struct img_fd *b = &img->fds[j];
  if (xa.type != xb.type) { snprintf(err, errlen, "fd %u and fd %u: a Unix socket pair of two types", a->r.fd, b->r.fd); return -1; }
  int sv[2];
  if (socketpair(AF_UNIX, (int)xa.type | SOCK_CLOEXEC, 0, sv) != 0) {
    snprintf(err, errlen, "fd %u: socketpair: %s", a->r.fd, strerror(errno));
    return -1;
  }
  struct { struct img_fd *f; struct tg_unix_sock *x; int s; } e[2] = {{a, &xa, sv[0]}, {b, &xb, sv[1]}};
  for (int k = 0; k < 2; k++) {
    set_buf(e[k].s, SO_SNDBUFFORCE, SO_SNDBUF, e[k].x->sndbuf);
    set_buf(e[k].s, SO_RCVBUFFORCE, SO_RCVBUF, e[k].x->rcvbuf);
    int one = 1;
    if ((e[k].x->flags & 1) && setsockopt(e[k].s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
      snprintf(err, errlen, "fd %u: SO_PASSCRED: %s", e[k].f->r.fd, strerror(errno));
      return -1;
    }
    sa_family_t fam = AF_UNIX; /* an empty address: the kernel picks a fresh autobind name */
    if ((e[k].x->flags & 2) && bind(e[k].s, (const struct sockaddr *)&fam, sizeof fam) != 0 && errno != EINVAL) {
      snprintf(err, errlen, "fd %u: autobind: %s", e[k].f->r.fd, strerror(errno));
      return -1;
    }
  }
  /* data queued for a is written by b, and the reverse */
  if (refill(img, xa.ino, sv[1], a->r.fd, err, errlen) != 0 || refill(img, xb.ino, sv[0], b->r.fd, err, errlen) != 0) return -1;
  for (int k = 0; k < 2; k++) {
    /* shutting down one side sets the matching bit of the peer, which the image holds too */
    int how = (e[k].x->shutdown & 3) == 3 ? SHUT_RDWR : (e[k].x->shutdown & 1) ? SHUT_RD : (e[k].x->shutdown & 2) ? SHUT_WR : -1;
    if (how >= 0 && shutdown(e[k].s, how) != 0) {
      snprintf(err, errlen, "fd %u: shutdown: %s", e[k].f->r.fd, strerror(errno));
      return -1;
    }
    if (e[k].x->peek_off >= 0 && setsockopt(e[k].s, SOL_SOCKET, SO_PEEK_OFF, &e[k].x->peek_off, sizeof(int)) != 0) {
      snprintf(err, errlen, "fd %u: SO_PEEK_OFF: %s", e[k].f->r.fd, strerror(errno));
      return -1;
    }
    if (fcntl(e[k].s, F_SETFL, (int)(e[k].f->r.open_flags & (O_NONBLOCK | O_ASYNC))) != 0) {
      snprintf(err, errlen, "fd %u: fcntl(F_SETFL): %s", e[k].f->r.fd, strerror(errno));
      return -1;
    }
    int h = fcntl(e[k].s, F_DUPFD_CLOEXEC, tmp_base);
    if (h < 0) { snprintf(err, errlen, "fcntl(F_DUPFD): %s", strerror(errno)); return -1; }
    close(e[k].s);
    tmp[k == 0 ? i : j] = h;
  }
  return 0;
}
