/* A Unix datagram socket bound to a name of its own (an absolute path or an abstract name; not a
 * kernel-chosen autobind one): FD kind 18 (UnixDgram, docs/format.md), with the datagrams queued
 * for it in a SOCKET_DATA record. Asked before unix.c, which takes every other Unix socket.
 *
 * Capture: the name, the socket file's mode, buffer sizes, SO_PASSCRED, and the name of the peer
 * it is connected to (a datagram socket's peer is a name: connected outside the app, to another
 * socket of the app, or to none). With every thread parked, the queue is read with MSG_PEEK,
 * datagram after datagram through SO_PEEK_OFF (then the app's peek offset is put back): nothing is
 * taken from the running app, senders' addresses stay as they are. The kernel's peek at an offset
 * skips an empty datagram: one queued behind another is not seen (and not restored).
 *
 * Restore: bound to the same name again (the dead process's socket file replaced; a name another
 * process holds by then fails the restore, naming it), the file's mode, options, the queued
 * datagrams sent to it again from an unnamed socket (so their sender is unnamed now); once every
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

/* The queue of each socket (every thread parked): peeked datagram after datagram. */
static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen;
  if (!emit) return 0;
  static char data[QUEUE_CAP], one[256 * 1024];
  for (int k = 0; k < nheld; k++) {
    int fd = held[k].fd;
    int old = sockopt(fd, SO_PEEK_OFF), zero = 0;
    long e = tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
    size_t used = 0;
    uint32_t nmsg = 0;
    for (; e == 0;) {
      struct iovec iov = {one, sizeof one};
      struct msghdr mh;
      memset(&mh, 0, sizeof mh);
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      long n = tg_sys3(SYS_recvmsg, fd, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
      if (n == -EAGAIN) break;
      if (n < 0) { e = n; break; }
      if ((size_t)n > sizeof one || used + 4 + (size_t)n > sizeof data) { e = -EMSGSIZE; break; }
      uint32_t l = (uint32_t)n;
      memcpy(data + used, &l, 4);
      memcpy(data + used + 4, one, l);
      used += 4 + l;
      nmsg++;
      if (n == 0) break; /* an empty one at the head: the peek offset does not move past it */
    }
    tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old);
    if (e != 0) {
      snprintf(err, errlen, "fd %d (named Unix datagram socket): reading its queue: %s", fd,
               e == -EMSGSIZE ? "more than 1 MiB queued, or a datagram over 256 KiB" : strerror((int)-e));
      return -1;
    }
    if (!nmsg) continue;
    struct tg_rec_socket_data h = {held[k].ino, SOCK_DGRAM, nmsg};
    int we = emit(ctx, TG_REC_SOCKET_DATA, &h, sizeof h, data, used);
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
  /* its queue, sent to its name again from an unnamed socket, datagram by datagram */
  for (size_t k = 0; k < rc->nsocks; k++) {
    const struct img_sockdata *d = &rc->socks[k];
    if (d->h.ino != x.ino) continue;
    int from = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (from < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); close(s); return -1; }
    uint32_t m = 0;
    for (size_t off = 0; off + 4 <= d->len; m++) {
      uint32_t l;
      memcpy(&l, d->data + off, 4);
      if (l > d->len - off - 4) break;
      if (sendto(from, d->data + off + 4, l, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&name, nl) != (ssize_t)l) {
        snprintf(err, errlen, "fd %u: giving %s back its queued datagram %u: %s", f->r.fd, shown_name, m + 1, strerror(errno));
        close(from);
        close(s);
        return -1;
      }
      off += 4 + l;
    }
    close(from);
    if (m != d->h.nmsg) { snprintf(err, errlen, "fd %u: SOCKET_DATA holds %u datagrams, its header says %u", f->r.fd, m, d->h.nmsg); close(s); return -1; }
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
