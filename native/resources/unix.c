/* Unix sockets whose both ends are in the process (socketpair, or a connected pair): FD kind 9
 * and SOCKET_DATA records (docs/format.md).
 *
 * Capture: peers are found exactly with sock_diag (UNIX_DIAG_PEER gives the peer's inode); at the
 * end of the fd walk every socket's peer must be one of ours, and what is queued in each is read
 * with MSG_PEEK from offset 0 (SO_PEEK_OFF), then the application's peek offset is put back.
 * Raw syscalls and static memory only.
 *
 * Restore: a pair is made again with socketpair at its first end's record; each end gets its
 * buffer sizes back, then the data that was queued for it (written from the other end, datagram
 * by datagram), then its shutdown state and peek offset. */
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

#define MAX_SOCKS 1024
#define DATA_CAP (1u << 20) /* per socket: larger queues are refused by name */


static struct sock_seen { int fd; uint32_t ino, peer, type; } socks[MAX_SOCKS];
static int nsocks, overflow;

static const char *type_name(uint32_t t) {
  return t == SOCK_STREAM ? "stream" : t == SOCK_DGRAM ? "datagram" : t == SOCK_SEQPACKET ? "seqpacket" : "other";
}

/* The answer to one sock_diag lookup (tg_res_sock_diag's callback): 1 parsed, -EIO malformed. */
static int parse_diag(const struct nlmsghdr *h, void *ctx) {
  struct tg_unix_diag *out = ctx;
  if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct unix_diag_msg))) return -EIO;
  const struct unix_diag_msg *m = NLMSG_DATA(h);
  out->type = m->udiag_type;
  out->state = m->udiag_state;
  const char *a = (const char *)m + NLMSG_ALIGN(sizeof *m), *end = (const char *)h + h->nlmsg_len;
  while (a + sizeof(struct nlattr) <= end) {
    const struct nlattr *at = (const struct nlattr *)a;
    if (at->nla_len < sizeof *at || a + at->nla_len > end) break;
    const char *d = a + NLA_HDRLEN;
    size_t dl = at->nla_len - NLA_HDRLEN;
    switch (at->nla_type & NLA_TYPE_MASK) {
    case UNIX_DIAG_RQLEN:
      if (dl >= sizeof(struct unix_diag_rqlen)) {
        struct unix_diag_rqlen q;
        memcpy(&q, d, sizeof q);
        out->backlog = q.udiag_wqueue; /* a listening socket: its backlog */
        out->rqueue = q.udiag_rqueue;  /* a connected one: the bytes waiting to be read */
      }
      break;
    case UNIX_DIAG_NAME:
      if (dl > 0 && dl <= sizeof out->raw) {
        memcpy(out->raw, d, dl);
        out->raw_len = (uint32_t)dl;
      }
      if (dl > 0) {
        size_t n = dl < sizeof out->name - 1 ? dl : sizeof out->name - 1;
        memcpy(out->name, d, n);
        if (d[0] != 0 && n > 0 && d[n - 1] == 0) n--; /* a path's trailing NUL (some binders pass it) */
        out->name[n] = 0;
        if (out->name[0] == 0) out->name[0] = '@'; /* abstract name */
        for (size_t i = 1; i < n; i++) if (out->name[i] == 0) out->name[i] = '@';
      }
      break;
    case UNIX_DIAG_PEER: if (dl >= 4) memcpy(&out->peer, d, 4); break;
    case UNIX_DIAG_SHUTDOWN: if (dl >= 1) out->shutdown = (uint8_t)d[0]; break;
    }
    a += NLA_ALIGN(at->nla_len);
  }
  return 1;
}

/* One exact sock_diag lookup by inode (resource.h). */
int tg_unix_diag(uint32_t ino, struct tg_unix_diag *out) {
  memset(out, 0, sizeof *out);
  out->ino = ino;
  struct unix_diag_req r;
  memset(&r, 0, sizeof r);
  r.sdiag_family = AF_UNIX;
  r.udiag_states = ~0u;
  r.udiag_ino = ino;
  r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
  r.udiag_cookie[0] = r.udiag_cookie[1] = ~0u; /* INET_DIAG_NOCOOKIE */
  int rc = tg_res_sock_diag(&r, sizeof r, 0, parse_diag, out);
  return rc == 1 ? 0 : rc < 0 ? rc : -EIO; /* (an answer without a message: malformed) */
}

static int sockopt(int fd, int level, int name) {
  int v = 0;
  socklen_t l = sizeof v;
  return tg_sys5(SYS_getsockopt, fd, level, name, &v, &l) == 0 ? v : -1;
}

/* "fd 5 (Unix stream socket bound to /x, connected to /y)": the peer's address from getpeername
 * (sock_diag cannot name a peer that is not accepted yet) */
static void describe(int fd, const struct tg_unix_diag *u, char *out, size_t cap) {
  struct sockaddr_un sa;
  socklen_t sl = sizeof sa;
  char peer[112] = "";
  memset(&sa, 0, sizeof sa);
  if (u->state == 1 && tg_sys3(SYS_getpeername, fd, &sa, &sl) == 0) {
    size_t n = sl > offsetof(struct sockaddr_un, sun_path) ? sl - offsetof(struct sockaddr_un, sun_path) : 0;
    if (n > sizeof peer - 1) n = sizeof peer - 1;
    memcpy(peer, sa.sun_path, n);
    peer[n] = 0;
    if (n && peer[0] == 0) peer[0] = '@';
    if (!n) snprintf(peer, sizeof peer, "an unnamed socket");
  }
  snprintf(out, cap, "fd %d (Unix %s socket%s%s%s%s)", fd, type_name(u->type),
           u->name[0] ? (u->state == 10 ? " listening on " : " bound to ") : "", u->name, peer[0] ? ", connected to " : "", peer);
}

/* The socket inodes this process holds (every fd, the agent's own too), listed once per walk: a
 * peer among them is inside; any other is another process's. */
#define MAX_OWN 4096
static uint32_t own_inos[MAX_OWN];
static int nown = -1; /* -1: not listed yet in this walk */

static int own_socket(uint32_t ino) {
  if (nown < 0) {
    nown = 0;
    int dfd = (int)tg_sys3(SYS_open, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dfd < 0) return -1;
    static char buf[4096] __attribute__((aligned(8)));
    for (;;) {
      long n = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
        off += d->reclen;
        int fd = 0;
        const char *c = d->name;
        if (*c < '0' || *c > '9') continue;
        for (; *c >= '0' && *c <= '9'; c++) fd = fd * 10 + (*c - '0');
        struct stat st;
        if (fd == dfd || tg_sys2(SYS_fstat, fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        if (nown == MAX_OWN) { tg_sys1(SYS_close, dfd); return -1; }
        own_inos[nown++] = (uint32_t)st.st_ino;
      }
    }
    tg_sys1(SYS_close, dfd);
  }
  for (int i = 0; i < nown; i++) if (own_inos[i] == ino) return 1;
  return 0;
}

/* A process tree's cut: the socket inodes held by the other processes of this PID namespace (the
 * app's, which holds the app's processes and its init), listed once per walk from the host's /proc
 * (every process there whose ns/pid is ours). Used only for a socket whose peer is not this
 * process's: a peer among them is in the app (the daemon checks the pairs), any other is outside. */
#define MAX_TREE 16384
static uint32_t tree_inos[MAX_TREE];
static int ntree = -1; /* -1: not listed yet in this walk */

/* fn(dirfd, name) on every numeric entry of the directory at path; 0, or -errno opening it */
static int each_number(const char *path, void (*fn)(const char *name, void *ctx), void *ctx) {
  int dfd = (int)tg_sys3(SYS_open, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) return dfd;
  static char buf[2][4096] __attribute__((aligned(8)));
  static int depth;
  char *b = buf[depth++ & 1];
  for (;;) {
    long n = tg_sys3(SYS_getdents64, dfd, b, sizeof buf[0]);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(b + off);
      off += d->reclen;
      if (d->name[0] >= '0' && d->name[0] <= '9') fn(d->name, ctx);
    }
  }
  depth--;
  tg_sys1(SYS_close, dfd);
  return 0;
}

struct tree_walk { char pidns[64]; char self[24]; const char *pid; };

static void note_fd(const char *name, void *ctx) {
  struct tree_walk *w = ctx;
  char path[96], t[64];
  snprintf(path, sizeof path, "/proc/%s/fd/%s", w->pid, name);
  long n = tg_sys3(SYS_readlink, path, t, sizeof t - 1);
  if (n <= 8 || memcmp(t, "socket:[", 8) != 0) return;
  t[n] = 0;
  uint32_t ino = 0;
  for (const char *c = t + 8; *c >= '0' && *c <= '9'; c++) ino = ino * 10 + (uint32_t)(*c - '0');
  if (ntree < MAX_TREE) tree_inos[ntree++] = ino;
}

static void note_process(const char *name, void *ctx) {
  struct tree_walk *w = ctx;
  if (!strcmp(name, w->self)) return;
  char path[64], ns[64];
  snprintf(path, sizeof path, "/proc/%s/ns/pid", name);
  long n = tg_sys3(SYS_readlink, path, ns, sizeof ns - 1);
  if (n <= 0) return;
  ns[n] = 0;
  if (strcmp(ns, w->pidns) != 0) return;
  snprintf(path, sizeof path, "/proc/%s/fd", name);
  w->pid = name;
  (void)each_number(path, note_fd, w);
}

/* 1 the peer is held by another process of the app's PID namespace, 0 not, -1 the list failed */
static int tree_socket(uint32_t ino) {
  if (ntree < 0) {
    static struct tree_walk w;
    memset(&w, 0, sizeof w);
    long n = tg_sys3(SYS_readlink, "/proc/self/ns/pid", w.pidns, sizeof w.pidns - 1);
    long m = tg_sys3(SYS_readlink, "/proc/self", w.self, sizeof w.self - 1);
    if (n <= 0 || m <= 0) return -1;
    ntree = 0;
    if (each_number("/proc", note_process, &w) != 0) { ntree = -1; return -1; }
    if (ntree >= MAX_TREE) { ntree = -1; return -1; }
  }
  for (int i = 0; i < ntree; i++) if (tree_inos[i] == ino) return 1;
  return 0;
}

static void begin(void) { nsocks = overflow = 0; nown = -1; ntree = -1; }

/* A connected socket whose peer is outside the app (another process's socket, or gone): a
 * datagram socket connected to a name is connected to that name again at restore; any other comes
 * back closed with `run --external-unix closed`, else it is refused, naming the peer. */
static int describe_external(const struct tg_fd_probe *p, const struct tg_unix_diag *u, const char *d, int autobound, struct tg_rec_fd *rec,
                             char *extra, size_t extra_cap, char *err, size_t errlen) {
  int fd = p->fd;
  struct sockaddr_un sa;
  socklen_t sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  uint32_t peer_len = 0;
  if (u->peer && tg_sys3(SYS_getpeername, fd, &sa, &sl) == 0 && sl > offsetof(struct sockaddr_un, sun_path))
    peer_len = (uint32_t)(sl - offsetof(struct sockaddr_un, sun_path));
  if (peer_len && sa.sun_path[0] && sa.sun_path[peer_len - 1] == 0) peer_len--; /* a trailing NUL some binders pass */
  struct tg_unix_ext x;
  memset(&x, 0, sizeof x);
  x.type = u->type;
  if (u->type == SOCK_DGRAM && peer_len) {
    if (u->name[0] && !autobound) {
      snprintf(err, errlen, "%s cannot be checkpointed: a datagram socket bound to a name of its own and connected outside the app is not supported yet; close it before checkpointing", d);
      return -1;
    }
    if (sa.sun_path[0] != 0 && sa.sun_path[0] != '/') {
      snprintf(err, errlen, "%s cannot be checkpointed: it is connected to a relative path, which a restore cannot find again; connect it to an absolute path", d);
      return -1;
    }
    x.action = TG_UX_RECONNECT;
  } else if (!u->peer && u->type != SOCK_DGRAM && u->rqueue == 0) {
    /* its peer closed its end (a worker that exited) and nothing is left to read: the restore makes
     * it the same, whatever --external-unix says (nothing outside is lost) */
    x.action = TG_UX_EOF;
  } else if (tg_res_ext_unix_closed) {
    x.action = TG_UX_CLOSED;
  } else {
    snprintf(err, errlen,
             "%s cannot be checkpointed: its peer is %s, outside the application, and a restore cannot bring that connection back; "
             "run the app with `--external-unix closed` to have such connections restored closed (the app's next read gets ECONNRESET, "
             "a write EPIPE, as when the peer goes away), or close the connection before checkpointing",
             d, u->peer ? "another process's socket" : "gone (it closed its end)");
    return -1;
  }
  x.sndbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_SNDBUF);
  x.rcvbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_RCVBUF);
  x.flags = (sockopt(fd, SOL_SOCKET, SO_PASSCRED) > 0 ? 1 : 0) | (autobound ? 2 : 0);
  x.peer_len = peer_len;
  x.name_len = u->raw_len;
  if (extra_cap < sizeof x + x.peer_len + x.name_len) { snprintf(err, errlen, "fd %d: no room for the socket record", fd); return -1; }
  memcpy(extra, &x, sizeof x);
  memcpy(extra + sizeof x, sa.sun_path, x.peer_len);
  memcpy(extra + sizeof x + x.peer_len, u->raw, x.name_len);
  rec->kind = TG_FD_UNIX_EXT;
  rec->aux = u->peer;
  rec->extra_len = (uint32_t)(sizeof x + x.peer_len + x.name_len);
  return 0;
}

/* A listening socket bound to a name: recorded with its name, backlog and options; the
 * connections waiting in its accept queue are not (they are dropped: their clients see the
 * connection end). */
static int describe_listener(const struct tg_fd_probe *p, const struct tg_unix_diag *u, const char *d, struct tg_rec_fd *rec, char *extra,
                             size_t extra_cap, char *err, size_t errlen) {
  int fd = p->fd;
  if (u->raw_len == 0) {
    snprintf(err, errlen, "%s cannot be checkpointed: a listening socket without a name; close it before checkpointing", d);
    return -1;
  }
  if (u->raw[0] != 0 && u->raw[0] != '/') {
    snprintf(err, errlen, "%s cannot be checkpointed: it was bound to a relative path; bind it to an absolute path", d);
    return -1;
  }
  struct tg_unix_listen x;
  memset(&x, 0, sizeof x);
  x.type = u->type;
  x.backlog = u->backlog;
  x.sndbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_SNDBUF);
  x.rcvbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_RCVBUF);
  x.flags = sockopt(fd, SOL_SOCKET, SO_PASSCRED) > 0 ? 1 : 0;
  x.name_len = u->raw_len;
  if (u->raw[0] == '/') {
    char path[109];
    memcpy(path, u->raw, u->raw_len);
    path[u->raw_len] = 0;
    struct stat st;
    /* (the path may have been replaced or removed since the bind: then the mode is a default) */
    x.mode = tg_sys2(SYS_stat, path, &st) == 0 && S_ISSOCK(st.st_mode) ? (st.st_mode & 07777) : 0777;
    if (x.name_len && path[x.name_len - 1] == 0) x.name_len--; /* a trailing NUL some binders pass */
  }
  if (extra_cap < sizeof x + x.name_len) { snprintf(err, errlen, "fd %d: no room for the socket record", fd); return -1; }
  memcpy(extra, &x, sizeof x);
  memcpy(extra + sizeof x, u->raw, x.name_len);
  rec->kind = TG_FD_UNIX_LISTEN;
  rec->extra_len = (uint32_t)(sizeof x + x.name_len);
  return 0;
}

static int describe_fd(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  if (!S_ISSOCK(p->st->st_mode)) return 1;
  int fd = p->fd;
  const struct stat *st = p->st;
  if (sockopt(fd, SOL_SOCKET, SO_DOMAIN) != AF_UNIX) return 1;
  struct tg_unix_diag u;
  int e = tg_unix_diag((uint32_t)st->st_ino, &u);
  if (e < 0) {
    snprintf(err, errlen, "fd %d (Unix socket socket:[%llu]) cannot be checkpointed: sock_diag lookup failed: %s", fd,
             (unsigned long long)st->st_ino, strerror(-e));
    return -1;
  }
  char d[400];
  describe(fd, &u, d, sizeof d);
  if (u.state == 10 /* TCP_LISTEN */) return describe_listener(p, &u, d, rec, extra, extra_cap, err, errlen);
  if (u.type != SOCK_STREAM && u.type != SOCK_DGRAM && u.type != SOCK_SEQPACKET) {
    snprintf(err, errlen, "%s cannot be checkpointed: this socket type is not supported; close it before checkpointing", d);
    return -1;
  }
  if (u.state != 1 /* TCP_ESTABLISHED */) {
    snprintf(err, errlen, "%s cannot be checkpointed: it is not connected; only connected socket pairs with both ends in the app are supported: close it before checkpointing, or run the app without it", d);
    return -1;
  }
  /* an autobind name (the kernel's "@" + 5 hex digits, given to a SO_PASSCRED socket when it
   * sends, or on bind with an empty address) is random: restore autobinds again */
  int autobound = strlen(u.name) == 6 && u.name[0] == '@';
  for (int i = 1; autobound && i < 6; i++)
    if (!((u.name[i] >= '0' && u.name[i] <= '9') || (u.name[i] >= 'a' && u.name[i] <= 'f'))) autobound = 0;
  /* a peer outside the process (one process alone: outside the app; in a tree the daemon finds
   * it in another process, or refuses) */
  if (u.type != SOCK_DGRAM || u.peer) {
    int own = u.peer ? own_socket(u.peer) : 0;
    if (own < 0) {
      snprintf(err, errlen, "%s cannot be checkpointed: listing this process's sockets failed (more than %d?)", d, MAX_OWN);
      return -1;
    }
    /* in a tree, a peer another process of the app holds is the daemon's to pair */
    int tree = !own && u.peer && tg_res_tree ? tree_socket(u.peer) : 0;
    if (tree < 0) {
      snprintf(err, errlen, "%s cannot be checkpointed: listing the sockets of the app's other processes failed (more than %d?)", d, MAX_TREE);
      return -1;
    }
    if (!own && !tree) return describe_external(p, &u, d, autobound, rec, extra, extra_cap, err, errlen);
  }
  /* a connection accepted from a named listener (or a client that bound a name before connecting)
   * carries that name: the pair is made again unnamed (its getsockname then gives an unnamed
   * address; the name stays the listener's, restored with it). Only stream and seqpacket ones: a
   * datagram socket's name is its address, which others send to. */
  int named = u.name[0] && !autobound;
  if (named && u.type == SOCK_DGRAM) {
    snprintf(err, errlen, "%s cannot be checkpointed: datagram sockets bound to a name are not supported yet (only unnamed pairs, as socketpair makes); close it before checkpointing", d);
    return -1;
  }
  if (extra_cap < sizeof(struct tg_unix_sock)) { snprintf(err, errlen, "fd %d: no room for the socket record", fd); return -1; }
  struct tg_unix_sock x;
  memset(&x, 0, sizeof x);
  x.ino = st->st_ino;
  x.peer_ino = u.peer;
  x.type = u.type;
  x.shutdown = u.shutdown & 3;
  x.sndbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_SNDBUF);
  x.rcvbuf = (uint32_t)sockopt(fd, SOL_SOCKET, SO_RCVBUF);
  x.peek_off = sockopt(fd, SOL_SOCKET, SO_PEEK_OFF);
  x.flags = (sockopt(fd, SOL_SOCKET, SO_PASSCRED) > 0 ? 1 : 0) | (autobound ? 2 : 0) | (named ? 4 : 0);
  memcpy(extra, &x, sizeof x);
  rec->kind = TG_FD_UNIX;
  rec->aux = u.peer;
  rec->extra_len = sizeof x;
  if (nsocks < MAX_SOCKS) socks[nsocks++] = (struct sock_seen){fd, (uint32_t)st->st_ino, u.peer, u.type};
  else overflow = 1;
  return 0;
}

/* Everything queued for reading on fd, without consuming it. Returns bytes stored in buf (stream:
 * raw; datagram/seqpacket: { u32 len, bytes }*), *nmsg = datagrams; -1 with err. */
static long peek_queue(const struct sock_seen *s, char *buf, size_t cap, uint32_t *nmsg, char *err, size_t errlen) {
  int fd = s->fd;
  int old = sockopt(fd, SOL_SOCKET, SO_PEEK_OFF), zero = 0;
  long e = tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
  if (e < 0) { snprintf(err, errlen, "fd %d (Unix %s socket): SO_PEEK_OFF: %s", fd, type_name(s->type), strerror((int)-e)); return -1; }
  struct tg_unix_diag u;
  int rdshut = tg_unix_diag(s->ino, &u) == 0 && (u.shutdown & 1);
  size_t len = 0;
  long rc = 0;
  int passcred = sockopt(fd, SOL_SOCKET, SO_PASSCRED) > 0;
  *nmsg = 0;
  for (;;) {
    int dgram = s->type != SOCK_STREAM;
    size_t hdr = dgram ? 4 : 0;
    if (len + hdr >= cap) { rc = -2; break; }
    struct iovec iov = {buf + len + hdr, cap - len - hdr};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    /* no room for fds: SCM_RIGHTS then sets MSG_CTRUNC and installs nothing; with SO_PASSCRED,
     * room for the credentials only (this process's own: the kernel attaches them again when the
     * data is sent back on restore) */
    union { char b[CMSG_SPACE(sizeof(struct ucred))]; struct cmsghdr align; } ctl;
    if (passcred) {
      mh.msg_control = ctl.b;
      mh.msg_controllen = sizeof ctl.b;
    }
    long r = tg_sys3(SYS_recvmsg, fd, &mh, MSG_PEEK | MSG_DONTWAIT | (dgram ? MSG_TRUNC : 0));
    if (r == -EINTR) continue;
    if (r == -EAGAIN) break;
    if (r < 0) { rc = r; break; }
    if (mh.msg_flags & MSG_CTRUNC) { rc = -3; break; } /* SCM_RIGHTS queued */
    for (struct cmsghdr *c = mh.msg_controllen ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) { /* not expected: no room was given */
        for (size_t k = 0; k + sizeof(int) <= c->cmsg_len - CMSG_LEN(0); k += sizeof(int)) {
          int x;
          memcpy(&x, CMSG_DATA(c) + k, sizeof x);
          tg_sys1(SYS_close, x);
        }
        rc = -3;
      }
    if (rc == -3) break;
    if (!dgram) {
      if (r == 0) break; /* end of stream: the peer shut down its sending side */
      len += (size_t)r;
      continue;
    }
    /* a zero-length read on a socket shut down for reading is its end (a zero-length datagram
     * queued there is indistinguishable from it) */
    if (r == 0 && rdshut) break;
    if ((size_t)r > cap - len - hdr) { rc = -2; break; }
    uint32_t l32 = (uint32_t)r;
    memcpy(buf + len, &l32, 4);
    len += 4 + (size_t)r;
    (*nmsg)++;
  }
  long pe = tg_sys5(SYS_setsockopt, fd, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old);
  if (rc == -2) {
    snprintf(err, errlen, "fd %d (Unix %s socket pair): more than %u bytes are queued in it, more than a checkpoint takes; checkpoint again once the application has read them",
             fd, type_name(s->type), DATA_CAP);
    return -1;
  }
  if (rc == -3) {
    snprintf(err, errlen, "fd %d (Unix %s socket pair) cannot be checkpointed: file descriptors are in flight in it (SCM_RIGHTS sent, not yet received); passing fds is not supported yet: checkpoint again once the application has received them",
             fd, type_name(s->type));
    return -1;
  }
  if (rc < 0) { snprintf(err, errlen, "fd %d (Unix %s socket): peeking at its queue: %s", fd, type_name(s->type), strerror((int)-rc)); return -1; }
  if (pe < 0 && old >= 0) { snprintf(err, errlen, "fd %d (Unix %s socket): restoring SO_PEEK_OFF: %s", fd, type_name(s->type), strerror((int)-pe)); return -1; }
  return (long)len;
}

/* Datagram and seqpacket queues: MSG_PEEK cannot see an empty datagram that was peeked before
 * (the kernel skips it to let peek offsets move on, and an earlier checkpoint's peek is enough),
 * so once the peek found no fds in flight, the queue is taken out (recv) and put back in the same
 * order through its peer, which is in this process. Refilling cannot run out of room: the same
 * datagrams were all queued a moment ago, charged to the same sender. Not for a shut-down pair
 * (its peer can no longer send): there the peeked copy stands. Returns the bytes in buf. */
static long take_and_requeue(const struct sock_seen *s, int peer_fd, char *buf, size_t cap, uint32_t *nmsg, char *err, size_t errlen) {
  struct tg_unix_diag a, b;
  if (tg_unix_diag(s->ino, &a) != 0 || tg_unix_diag(s->peer, &b) != 0 || a.shutdown || b.shutdown) return -2;
  int old = sockopt(s->fd, SOL_SOCKET, SO_PEEK_OFF);
  size_t len = 0;
  uint32_t m = 0;
  for (;;) {
    if (len + 4 > cap) break;
    long r = tg_sys6l(SYS_recvfrom, s->fd, buf + len + 4, cap - len - 4, MSG_DONTWAIT, 0, 0);
    if (r == -EINTR) continue;
    if (r < 0) break; /* EAGAIN: empty */
    uint32_t l32 = (uint32_t)r;
    memcpy(buf + len, &l32, 4);
    len += 4 + (size_t)r;
    m++;
  }
  for (size_t at = 0; at < len;) {
    uint32_t l32;
    memcpy(&l32, buf + at, 4);
    long r;
    do r = tg_sys6l(SYS_sendto, peer_fd, buf + at + 4, l32, MSG_DONTWAIT | MSG_NOSIGNAL, 0, 0);
    while (r == -EINTR);
    if (r != (long)l32) {
      snprintf(err, errlen, "fd %d (Unix %s socket pair): putting its queue back failed at datagram %zu: %s; the application lost queued datagrams",
               s->fd, type_name(s->type), (size_t)at, r < 0 ? strerror((int)-r) : "short send");
      return -1;
    }
    at += 4 + l32;
  }
  if (old >= 0) tg_sys5(SYS_setsockopt, s->fd, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old);
  *nmsg = m;
  return (long)len;
}

static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen; /* the sockets were noted by describe_fd, with their peers */
  if (overflow) { snprintf(err, errlen, "more than %d Unix sockets: not supported", MAX_SOCKS); return -1; }
  for (int i = 0; i < nsocks; i++) {
    int mutual = 0;
    for (int j = 0; j < nsocks; j++) if (socks[j].ino == socks[i].peer && socks[j].peer == socks[i].ino) mutual = 1;
    /* part of a tree's cut: a peer in another process of the app (the daemon checks that it is,
     * from what tg_unix_unmatched tells it) */
    if (!mutual && tg_res_tree && socks[i].peer) continue;
    if (!mutual) {
      struct tg_unix_diag u;
      char d[400];
      if (tg_unix_diag(socks[i].ino, &u) == 0) describe(socks[i].fd, &u, d, sizeof d);
      else snprintf(d, sizeof d, "fd %d (Unix %s socket)", socks[i].fd, type_name(socks[i].type));
      snprintf(err, errlen,
               "%s cannot be checkpointed: its peer (%s) is outside the application; sockets to other processes are not supported yet: "
               "close the connection before checkpointing (and reconnect after), or run the app without it",
               d, socks[i].peer ? "another process's socket" : "not accepted yet, or closed");
      return -1;
    }
  }
  if (!emit) return 0;
  static char data[DATA_CAP + 4096];
  for (int i = 0; i < nsocks; i++) {
    int first = 1;
    for (int j = 0; j < i; j++) if (socks[j].ino == socks[i].ino) first = 0;
    if (!first) continue; /* a dup: one queue per socket */
    uint32_t nmsg;
    long n = peek_queue(&socks[i], data, DATA_CAP, &nmsg, err, errlen);
    if (n < 0) return -1;
    int peer_fd = -1;
    for (int j = 0; j < nsocks; j++) if (socks[j].ino == socks[i].peer) peer_fd = socks[j].fd;
    /* (a peer in another process of the tree: the peeked copy stands) */
    if (socks[i].type != SOCK_STREAM && peer_fd >= 0) {
      uint32_t m2;
      long n2 = take_and_requeue(&socks[i], peer_fd, data, sizeof data, &m2, err, errlen);
      if (n2 == -1) return -1;
      if (n2 >= 0) { n = n2; nmsg = m2; }
    }
    if (n == 0 && nmsg == 0) continue;
    struct tg_rec_socket_data h = {socks[i].ino, socks[i].type, nmsg};
    int we = emit(ctx, TG_REC_SOCKET_DATA, &h, sizeof h, data, (size_t)n);
    if (we != 0) {
      snprintf(err, errlen, "recording the data queued in fd %d: %s", socks[i].fd, strerror(we));
      return -1;
    }
  }
  return 0;
}

/* After a tree-mode capture: the sockets whose peer is not in this process, as JSON
 * [[fd,ino,peer],...] for the daemon (which checks that every such peer is in another process of
 * the app). The length written (0 when cap is too small: then the daemon sees nothing and the
 * restore would refuse a missing peer, never restore wrong). */
TG_RES_HIDDEN size_t tg_unix_unmatched(char *out, size_t cap) {
  size_t n = 0;
  if (cap < 3) return 0;
  out[n++] = '[';
  for (int i = 0; i < nsocks; i++) {
    int mutual = 0;
    for (int j = 0; j < nsocks; j++) if (socks[j].ino == socks[i].peer && socks[j].peer == socks[i].ino) mutual = 1;
    if (mutual) continue;
    int w = snprintf(out + n, cap - n, "%s[%d,%u,%u]", n > 1 ? "," : "", socks[i].fd, socks[i].ino, socks[i].peer);
    if (w < 0 || (size_t)w >= cap - n - 1) return 0;
    n += (size_t)w;
  }
  out[n++] = ']';
  out[n] = 0;
  return n;
}

/* ---- restore ---- */

TG_RES_HIDDEN int tg_unix_ids(const struct img_fd *f, uint64_t *ino, uint64_t *peer) {
  struct tg_unix_sock x;
  if (f->r.kind != TG_FD_UNIX || f->r.extra_len < sizeof x) return -1;
  memcpy(&x, f->extra, sizeof x);
  *ino = x.ino;
  *peer = x.peer_ino;
  return 0;
}

static int extra_of(const struct img_fd *f, struct tg_unix_sock *x) {
  if (f->r.extra_len < sizeof *x) return -1;
  memcpy(x, f->extra, sizeof *x);
  return 0;
}

/* Writes through `from` what was queued for reading at the other end. */
static int refill(const struct tg_fd_restore *img, uint64_t ino, int from, uint32_t fdno, char *err, size_t errlen) {
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

static int open_pair(struct tg_fd_restore *img, size_t i, char *err, size_t errlen) {
  int *tmp = img->tmp, tmp_base = img->tmp_base;
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
    tg_res_sock_buf(e[k].s, SO_SNDBUFFORCE, SO_SNDBUF, e[k].x->sndbuf);
    tg_res_sock_buf(e[k].s, SO_RCVBUFFORCE, SO_RCVBUF, e[k].x->rcvbuf);
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

/* A listening socket again on its name. A path left behind by the dead process (nobody answers on
 * it) is removed first; one somebody listens on, or a file that is not a socket, fails the restore
 * naming it; so does an abstract name in use. */
static int open_listener(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_unix_listen x;
  if (f->r.extra_len < sizeof x) { snprintf(err, errlen, "fd %u: listening Unix socket record without its data", f->r.fd); return -1; }
  memcpy(&x, f->extra, sizeof x);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (x.name_len == 0 || x.name_len > sizeof sa.sun_path || x.name_len > f->r.extra_len - sizeof x) {
    snprintf(err, errlen, "fd %u: listening Unix socket record with a name of %u bytes", f->r.fd, x.name_len);
    return -1;
  }
  memcpy(sa.sun_path, f->extra + sizeof x, x.name_len);
  socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + x.name_len);
  char shown[112];
  snprintf(shown, sizeof shown, "%s%.*s", sa.sun_path[0] ? "" : "@", (int)(sa.sun_path[0] ? x.name_len : x.name_len - 1), sa.sun_path[0] ? sa.sun_path : sa.sun_path + 1);
  int s = socket(AF_UNIX, (int)x.type | SOCK_CLOEXEC, 0);
  if (s < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); return -1; }
  if (tg_res_unix_bind_again(s, (int)x.type, &sa, sl, x.mode, x.sndbuf, x.rcvbuf, x.flags, f->r.fd, "listen on", "listens", shown, err, errlen) != 0) {
    close(s);
    return -1;
  }
  if (listen(s, (int)x.backlog) != 0 || fcntl(s, F_SETFL, (int)(f->r.open_flags & (O_NONBLOCK | O_ASYNC))) != 0) {
    snprintf(err, errlen, "fd %u: listen on %s: %s", f->r.fd, shown, strerror(errno));
    close(s);
    return -1;
  }
  rc->tmp[i] = tg_res_high(s, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

/* A socket whose peer was outside the app. TG_UX_RECONNECT: a datagram socket connected to the
 * peer's name again; nothing bound there now leaves it unconnected (its next send gets ENOTCONN;
 * the daemon's restore output says so). TG_UX_CLOSED: one end of a fresh pair whose other end
 * is closed with a byte unread in it, which the kernel reports as a reset: the next read gets
 * ECONNRESET (then end of file), a write EPIPE. TG_UX_EOF: the peer had closed its end with
 * nothing left to read: a fresh pair whose other end is closed (end of file, EPIPE). */
static int open_external(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_unix_ext x;
  if (f->r.extra_len < sizeof x) { snprintf(err, errlen, "fd %u: Unix socket record without its data", f->r.fd); return -1; }
  memcpy(&x, f->extra, sizeof x);
  if (x.peer_len > sizeof(((struct sockaddr_un *)0)->sun_path) || x.peer_len > f->r.extra_len - sizeof x) {
    snprintf(err, errlen, "fd %u: Unix socket record with a peer name of %u bytes", f->r.fd, x.peer_len);
    return -1;
  }
  int s = -1;
  if (x.action == TG_UX_RECONNECT) {
    s = socket(AF_UNIX, (int)x.type | SOCK_CLOEXEC, 0);
    if (s < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); return -1; }
    int one = 1;
    if ((x.flags & 1) && setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
      snprintf(err, errlen, "fd %u: SO_PASSCRED: %s", f->r.fd, strerror(errno));
      close(s);
      return -1;
    }
    sa_family_t fam = AF_UNIX;
    if ((x.flags & 2) && bind(s, (const struct sockaddr *)&fam, sizeof fam) != 0 && errno != EINVAL) {
      snprintf(err, errlen, "fd %u: autobind: %s", f->r.fd, strerror(errno));
      close(s);
      return -1;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, f->extra + sizeof x, x.peer_len);
    /* (refused or missing: left unconnected, as the restore output says) */
    if (x.peer_len) (void)connect(s, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + x.peer_len));
  } else if (x.action == TG_UX_EOF) {
    int sv[2];
    if (socketpair(AF_UNIX, (int)x.type | SOCK_CLOEXEC, 0, sv) != 0) {
      snprintf(err, errlen, "fd %u: socketpair: %s", f->r.fd, strerror(errno));
      return -1;
    }
    close(sv[1]); /* nothing unread in it: a read gets end of file, a write EPIPE */
    s = sv[0];
  } else if (x.action == TG_UX_CLOSED) {
    int sv[2];
    if (socketpair(AF_UNIX, (int)x.type | SOCK_CLOEXEC, 0, sv) != 0) {
      snprintf(err, errlen, "fd %u: socketpair: %s", f->r.fd, strerror(errno));
      return -1;
    }
    char b = 0;
    ssize_t n = send(sv[0], &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    int e = errno;
    close(sv[1]);
    if (n != 1) { snprintf(err, errlen, "fd %u: making it a closed connection: send: %s", f->r.fd, strerror(e)); close(sv[0]); return -1; }
    s = sv[0];
  } else {
    snprintf(err, errlen, "fd %u: Unix socket record with an unknown action %u", f->r.fd, x.action);
    return -1;
  }
  tg_res_sock_buf(s, SO_SNDBUFFORCE, SO_SNDBUF, x.sndbuf);
  tg_res_sock_buf(s, SO_RCVBUFFORCE, SO_RCVBUF, x.rcvbuf);
  if (fcntl(s, F_SETFL, (int)(f->r.open_flags & (O_NONBLOCK | O_ASYNC))) != 0) {
    snprintf(err, errlen, "fd %u: fcntl(F_SETFL): %s", f->r.fd, strerror(errno));
    close(s);
    return -1;
  }
  rc->tmp[i] = tg_res_high(s, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

static int open_any(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  uint32_t k = rc->fds[i].r.kind;
  return k == TG_FD_UNIX_LISTEN ? open_listener(rc, i, err, errlen) : k == TG_FD_UNIX_EXT ? open_external(rc, i, err, errlen) : open_pair(rc, i, err, errlen);
}

static int owns(uint32_t k) { return k == TG_FD_UNIX || k == TG_FD_UNIX_LISTEN || k == TG_FD_UNIX_EXT; }

const struct tg_fd_ops tg_fd_unix = {.name = "unix", .describe = describe_fd, .begin = begin, .end = end, .owns = owns, .open = open_any};
