/* A Unix datagram socket bound to a name of its own (an absolute path or an abstract name; not a
 * kernel-chosen autobind one): FD kind 18 (UnixDgram, docs/format.md), with the datagrams queued
 * for it in a SOCKET_DATA record. Asked before unix.c, which takes every other Unix socket.
 *
 * Capture: the name, the socket file's mode, buffer sizes, SO_PASSCRED, and the name of the peer
 * it is connected to (a datagram socket's peer is a name: connected outside the app, to another
 * socket of the app, or to none). With every thread parked, the queue is read with MSG_PEEK,
 * datagram after datagram through SO_PEEK_OFF (then the app's peek offset is put back): nothing is
 * taken from the running app, senders' addresses stay as they are; each datagram's sender name is
 * recorded with it (DGRAM_SENDERS). The kernel's peek at an offset skips an empty datagram: one
 * queued behind another is not seen (and not restored).
 *
 * Restore: bound to the same name again (the dead process's socket file replaced; a name another
 * process holds by then fails the restore, naming it), the file's mode, options, the queued
 * datagrams sent to it again, each from its sender's name (unixsender.c), so that recvfrom gives
 * the address it gave before and an answer reaches whoever holds that name now; once every
 * fd is in place, connected to its peer's name again: nothing bound there leaves it unconnected
 * (its next send gets ENOTCONN), and the restore says so on its stderr (the app's log). */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/sys.h"

#define MAX_DGRAM 64
#define QUEUE_CAP (1u << 20) /* bytes of queued datagrams a socket may hold at a checkpoint */
#define SENDERS_CAP (512u << 10) /* bytes of their senders' names (4 + up to 108 each) */

static int sockopt(int fd, int name) {
  int v = 0;
  socklen_t l = sizeof v;
  return tg_sys5(SYS_getsockopt, fd, SOL_SOCKET, name, &v, &l) == 0 ? v : -1;
}

/* "/path" or "@abstract" of a raw name */
static void shown(const char *raw, uint32_t len, char *out, size_t cap) {
  if (!len) { snprintf(out, cap, "(no name)"); return; }
  if (raw[0]) snprintf(out, cap, "%.*s", (int)len, raw);
  else snprintf(out, cap, "@%.*s", (int)(len - 1), raw + 1);
}

static int autobound(const char *raw, uint32_t len) {
  if (len != 6 || raw[0] != 0) return 0;
  for (int i = 1; i < 6; i++)
    if (!((raw[i] >= '0' && raw[i] <= '9') || (raw[i] >= 'a' && raw[i] <= 'f'))) return 0;
  return 1;
}

static struct { int fd; uint64_t ino; } held[MAX_DGRAM];
static int nheld;

static void begin(void) { nheld = 0; }

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  if (!S_ISSOCK(p->st->st_mode) || sockopt(p->fd, SO_DOMAIN) != AF_UNIX || sockopt(p->fd, SO_TYPE) != SOCK_DGRAM) return 1;
  struct tg_unix_diag u;
  if (tg_unix_diag((uint32_t)p->st->st_ino, &u) != 0) return 1; /* unix.c says why */
  uint32_t nl = u.raw_len;
  if (nl && u.raw[0] == '/' && u.raw[nl - 1] == 0) nl--; /* a trailing NUL some binders pass */
  if (!nl || autobound(u.raw, nl)) return 1;          /* unnamed or autobound: unix.c's */
  char name[112];
  shown(u.raw, nl, name, sizeof name);
  if (u.raw[0] != 0 && u.raw[0] != '/') {
    snprintf(err, errlen, "fd %d (Unix datagram socket bound to %s) cannot be checkpointed: it was bound to a relative path; bind it to an absolute path", p->fd, name);
    return -1;
  }
  struct sockaddr_un sa;
  socklen_t sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  uint32_t peer_len = 0;
  if (u.peer && tg_sys3(SYS_getpeername, p->fd, &sa, &sl) == 0 && sl > offsetof(struct sockaddr_un, sun_path))
    peer_len = (uint32_t)(sl - offsetof(struct sockaddr_un, sun_path));
  if (peer_len && sa.sun_path[0] && sa.sun_path[peer_len - 1] == 0) peer_len--;
  if (u.peer && (!peer_len || (sa.sun_path[0] != 0 && sa.sun_path[0] != '/') || autobound(sa.sun_path, peer_len))) {
    snprintf(err, errlen, "fd %d (Unix datagram socket bound to %s) cannot be checkpointed: it is connected to a socket without a name a restore can find again (unnamed, autobound or a relative path)", p->fd, name);
    return -1;
  }
  struct tg_unix_dgram x;
  memset(&x, 0, sizeof x);
  x.ino = p->st->st_ino;
  x.sndbuf = (uint32_t)sockopt(p->fd, SO_SNDBUF);
  x.rcvbuf = (uint32_t)sockopt(p->fd, SO_RCVBUF);
  x.flags = sockopt(p->fd, SO_PASSCRED) > 0 ? 1 : 0;
  x.name_len = nl;
  x.peer_len = peer_len;
  if (u.raw[0] == '/') {
    char path[109];
    memcpy(path, u.raw, nl);
    path[nl] = 0;
    struct stat st;
    x.mode = tg_sys2(SYS_stat, path, &st) == 0 && S_ISSOCK(st.st_mode) ? (st.st_mode & 07777) : 0777;
  }
  if (extra_cap < sizeof x + nl + peer_len) { snprintf(err, errlen, "fd %d: no room for the socket record", p->fd); return -1; }
  memcpy(extra, &x, sizeof x);
  memcpy(extra + sizeof x, u.raw, nl);
  memcpy(extra + sizeof x + nl, sa.sun_path, peer_len);
  rec->kind = TG_FD_UNIX_DGRAM;
  rec->aux = u.peer;
  rec->extra_len = (uint32_t)(sizeof x + nl + peer_len);
  int seen = 0;
  for (int i = 0; i < nheld; i++) seen |= held[i].ino == x.ino;
  if (!seen) {
    if (nheld == MAX_DGRAM) { snprintf(err, errlen, "fd %d: more than %d named Unix datagram sockets: not supported", p->fd, MAX_DGRAM); return -1; }
    held[nheld].fd = p->fd;
    held[nheld++].ino = x.ino;
  }
  return 0;
}

/* The queue of each socket (every thread parked): peeked datagram after datagram, each with the
 * name of the socket that sent it (a DGRAM_SENDERS record when any has one). */
static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen;
  if (!emit) return 0;
  static char data[QUEUE_CAP], one[256 * 1024], senders[SENDERS_CAP];
  for (int k = 0; k < nheld; k++) {
    int fd = held[k].fd;
    int old = sockopt(fd, SO_PEEK_OFF), zero = 0;
    long e = tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
    size_t used = 0, sused = 0;
    uint32_t nmsg = 0, named = 0;
    for (; e == 0;) {
      struct iovec iov = {one, sizeof one};
      struct sockaddr_un from;
      struct msghdr mh;
      memset(&mh, 0, sizeof mh);
      memset(&from, 0, sizeof from);
      mh.msg_name = &from;
      mh.msg_namelen = sizeof from;
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      long n = tg_sys3(SYS_recvmsg, fd, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
      if (n == -EAGAIN) break;
      if (n < 0) { e = n; break; }
      if ((size_t)n > sizeof one || used + 4 + (size_t)n > sizeof data) { e = -EMSGSIZE; break; }
      uint32_t fl = mh.msg_namelen > offsetof(struct sockaddr_un, sun_path) ? (uint32_t)(mh.msg_namelen - offsetof(struct sockaddr_un, sun_path)) : 0;
      if (fl > sizeof from.sun_path) fl = sizeof from.sun_path;
      if (sused + 4 + fl > sizeof senders) { e = -ENOBUFS; break; }
      uint32_t l = (uint32_t)n;
      memcpy(data + used, &l, 4);
      memcpy(data + used + 4, one, l);
      used += 4 + l;
      memcpy(senders + sused, &fl, 4);
      memcpy(senders + sused + 4, from.sun_path, fl);
      sused += 4 + fl;
      named += fl != 0;
      nmsg++;
      if (n == 0) break; /* an empty one at the head: the peek offset does not move past it */
    }
    tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old);
    if (e != 0) {
      snprintf(err, errlen, "fd %d (named Unix datagram socket): reading its queue: %s", fd,
               e == -EMSGSIZE ? "more than 1 MiB queued, or a datagram over 256 KiB"
               : e == -ENOBUFS ? "too many datagrams queued from senders with names (their names take over 512 KiB)"
               : strerror((int)-e));
      return -1;
    }
    if (!nmsg) continue;
    struct tg_rec_socket_data h = {held[k].ino, SOCK_DGRAM, nmsg};
    int we = emit(ctx, TG_REC_SOCKET_DATA, &h, sizeof h, data, used);
    if (we == 0 && named) {
      struct tg_rec_dgram_senders sh = {held[k].ino, nmsg, 0};
      we = emit(ctx, TG_REC_DGRAM_SENDERS, &sh, sizeof sh, senders, sused);
    }
    if (we != 0) { snprintf(err, errlen, "writing the image: %s", strerror(we)); return -1; }
  }
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_UNIX_DGRAM; }

static int record(const struct img_fd *f, struct tg_unix_dgram *x, struct sockaddr_un *name, socklen_t *nl, struct sockaddr_un *peer,
                  socklen_t *pl, char *err, size_t errlen) {
  if (f->r.extra_len < sizeof *x) { snprintf(err, errlen, "fd %u: named Unix datagram socket record without its data", f->r.fd); return -1; }
  memcpy(x, f->extra, sizeof *x);
  if (!x->name_len || x->name_len > sizeof name->sun_path || x->peer_len > sizeof peer->sun_path ||
      (uint64_t)x->name_len + x->peer_len > f->r.extra_len - sizeof *x) {
    snprintf(err, errlen, "fd %u: named Unix datagram socket record with names of %u and %u bytes", f->r.fd, x->name_len, x->peer_len);
    return -1;
  }
  memset(name, 0, sizeof *name);
  memset(peer, 0, sizeof *peer);
  name->sun_family = peer->sun_family = AF_UNIX;
  memcpy(name->sun_path, f->extra + sizeof *x, x->name_len);
  memcpy(peer->sun_path, f->extra + sizeof *x + x->name_len, x->peer_len);
  *nl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + x->name_len);
  *pl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + x->peer_len);
  return 0;
}


/* two raw names alike (a path with or without its trailing NUL) */
static int same_name(const char *a, uint32_t al, const char *b, uint32_t bl) {
  if (al && bl && a[0] && b[0]) return strnlen(a, al) == strnlen(b, bl) && !memcmp(a, b, strnlen(a, al));
  return al == bl && !memcmp(a, b, al);
}

/* The socket of the app (this process's, made already) bound to the name raw/len: -1 if none */
static int own_socket(const struct tg_fd_restore *rc, const char *raw, uint32_t len) {
  for (size_t j = 0; j < rc->nfds; j++) {
    const struct img_fd *g = &rc->fds[j];
    struct tg_unix_dgram y;
    if (g->r.kind != TG_FD_UNIX_DGRAM || g->r.reserved || rc->tmp[j] < 0 || g->r.extra_len < sizeof y) continue;
    memcpy(&y, g->extra, sizeof y);
    if (y.name_len <= g->r.extra_len - sizeof y && same_name(g->extra + sizeof y, y.name_len, raw, len)) return rc->tmp[j];
  }
  return -1;
}

#define MAX_SENDERS 64

/* The queue, sent to the socket's name again datagram by datagram, each from a socket bound to the
 * name of the socket that sent it (unixsender.c; the app's own socket of that name when this
 * process made it already; the socket itself for one it sent to itself), or from an unnamed
 * socket (an unnamed sender, or an image without a DGRAM_SENDERS record). */
static int refill(const struct tg_fd_restore *rc, int self, const struct img_fd *f, const struct tg_unix_dgram *x, const struct sockaddr_un *name, socklen_t nl,
                  const char *shown_name, char *err, size_t errlen) {
  for (size_t k = 0; k < rc->nsocks; k++) {
    const struct img_sockdata *d = &rc->socks[k];
    if (d->h.ino != x->ino) continue;
    struct { const char *raw; uint32_t len; int fd; } made[MAX_SENDERS];
    int nmade = 0, anon = -1, ret = -1;
    uint32_t m = 0;
    size_t at = 0;
    for (size_t off = 0; off + 4 <= d->len; m++) {
      uint32_t l, sl = 0;
      memcpy(&l, d->data + off, 4);
      if (l > d->len - off - 4) break;
      const char *sraw = NULL;
      if (d->senders && at + 4 <= d->senders_len) {
        memcpy(&sl, d->senders + at, 4);
        if (sl > d->senders_len - at - 4) { snprintf(err, errlen, "fd %u: DGRAM_SENDERS runs past its payload", f->r.fd); goto out; }
        sraw = d->senders + at + 4;
        at += 4 + sl;
      }
      int from = -1, to_own = 0, once = 0;
      if (!sl) {
        if (anon < 0 && (anon = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); goto out; }
        from = anon, to_own = 1;
      } else if (same_name(sraw, sl, name->sun_path, (uint32_t)(nl - offsetof(struct sockaddr_un, sun_path)))) {
        from = self, to_own = 1; /* it sent to itself */
      } else if ((from = own_socket(rc, sraw, sl)) >= 0) {
        to_own = 1;
      } else {
        for (int q = 0; q < nmade && from < 0; q++) if (made[q].len == sl && !memcmp(made[q].raw, sraw, sl)) from = made[q].fd;
        if (from < 0) {
          if ((from = tg_unix_sender(name, nl, sraw, sl, f->r.fd, m + 1, err, errlen)) < 0) goto out;
          if (nmade < MAX_SENDERS) made[nmade++] = (typeof(made[0])){sraw, sl, from};
          else once = 1;
        }
      }
      ssize_t n = to_own ? sendto(from, d->data + off + 4, l, MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)name, nl)
                         : send(from, d->data + off + 4, l, MSG_DONTWAIT | MSG_NOSIGNAL);
      int e = errno;
      if (once) close(from);
      if (n != (ssize_t)l) {
        snprintf(err, errlen, "fd %u: giving %s back its queued datagram %u: %s", f->r.fd, shown_name, m + 1, strerror(e));
        goto out;
      }
      off += 4 + l;
    }
    if (m != d->h.nmsg) { snprintf(err, errlen, "fd %u: SOCKET_DATA holds %u datagrams, its header says %u", f->r.fd, m, d->h.nmsg); goto out; }
    ret = 0;
  out:
    for (int q = 0; q < nmade; q++) close(made[q].fd);
    if (anon >= 0) close(anon);
    if (ret != 0) return -1;
  }
  return 0;
}

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_unix_dgram x;
  struct sockaddr_un name, peer;
  socklen_t nl, pl;
  if (record(f, &x, &name, &nl, &peer, &pl, err, errlen) != 0) return -1;
  char shown_name[112];
  shown(name.sun_path, x.name_len, shown_name, sizeof shown_name);
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); return -1; }
  if (tg_res_unix_bind_again(s, SOCK_DGRAM, &name, nl, x.mode, x.sndbuf, x.rcvbuf, x.flags, f->r.fd, "bind", "receives", shown_name, err, errlen) != 0) {
    close(s);
    return -1;
  }
  if (refill(rc, s, f, &x, &name, nl, shown_name, err, errlen) != 0) {
    close(s);
    return -1;
  }
  if (fcntl(s, F_SETFL, (int)(f->r.open_flags & (O_NONBLOCK | O_ASYNC))) != 0) {
    snprintf(err, errlen, "fd %u: fcntl(F_SETFL): %s", f->r.fd, strerror(errno));
    close(s);
    return -1;
  }
  rc->tmp[i] = tg_res_high(s, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

/* once every fd is in place (a peer in the app is bound by then): connected to its peer's name */
static int settle(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_unix_dgram x;
  struct sockaddr_un name, peer;
  socklen_t nl, pl;
  if (record(f, &x, &name, &nl, &peer, &pl, err, errlen) != 0) return -1;
  if (!x.peer_len) return 0;
  if (connect((int)f->r.fd, (struct sockaddr *)&peer, pl) != 0) {
    char a[112], b[112];
    shown(name.sun_path, x.name_len, a, sizeof a);
    shown(peer.sun_path, x.peer_len, b, sizeof b);
    fprintf(stderr, "tardigrade-restore: fd %u (Unix datagram socket bound to %s): cannot connect it to %s again (%s): left unconnected\n", f->r.fd, a, b, strerror(errno));
  }
  return 0;
}

const struct tg_fd_ops tg_fd_unix_dgram = {.name = "unix-dgram", .describe = describe, .begin = begin, .end = end, .owns = owns, .open = open_one, .settle = settle};
