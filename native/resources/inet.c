/* TCP and UDP sockets, IPv4 and IPv6 (FD kind 13, INET_REPAIR records; docs/format.md).
 *
 * Capture (agent, threads parked; raw syscalls, static memory): the socket's addresses, state and
 * the options that matter (SO_REUSEADDR/PORT, TCP_NODELAY, keepalive, buffer sizes, IPV6_V6ONLY,
 * SO_BROADCAST, timeouts); a listener's backlog from sock_diag. An established TCP connection whose
 * other end is also one of the process's sockets (loopback) is read with TCP_REPAIR at the end of
 * the walk (sequence numbers, window, options, both queues peeked): an INET_REPAIR record.
 *
 * Restore (restorer, stage 1, libc): listeners and UDP sockets are made again on the same address
 * (a taken address refuses the restore, naming who holds it); connections whose peer is inside come
 * back whole with TCP_REPAIR; any other connection's peer has seen it drop (the app was killed), so
 * it comes back closed: reset, its next read or write gets ECONNRESET. One with both ends in the app
 * but no TCP_REPAIR state (an end's process had no CAP_NET_ADMIN) refuses the restore, naming it;
 * with --allow-closed-tcp (tg_res_tcp_closed) both ends come back closed by their peer (a FIN: end
 * of file). */
#include "resource.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "../common/readfile.h"
#include "../common/sys.h"

#define MAX_SOCKS 1024
#define REPAIR_CAP (1u << 20) /* per connection restored whole: queues larger than this are refused */
#define EXTERNAL_ONE (256u << 10) /* connections to outside peers: per connection, and in all */
#define EXTERNAL_CAP (1u << 20)

static struct seen { int fd; struct tg_inet_sock x; } socks[MAX_SOCKS];
static int nsocks, overflow;

/* ---- naming ---- */

static const char *state_name(const struct tg_inet_sock *x) {
  static const char *tcp[] = {"?", "established", "syn-sent", "syn-recv", "fin-wait1", "fin-wait2", "time-wait", "closed", "close-wait", "last-ack", "listening", "closing", "new-syn-recv"};
  if (x->protocol == IPPROTO_UDP) return x->state == 1 ? "connected" : "unconnected";
  return x->state < sizeof tcp / sizeof *tcp ? tcp[x->state] : "?";
}

static void addr_str(uint16_t family, const uint8_t *a, uint16_t port, char *out, size_t cap) {
  char h[INET6_ADDRSTRLEN] = "?";
  if (family == AF_INET) snprintf(h, sizeof h, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
  else {
    /* no inet_ntop in the agent's capture path: a plain hex form is enough for a message */
    uint16_t w[8];
    for (int i = 0; i < 8; i++) w[i] = (uint16_t)(a[2 * i] << 8 | a[2 * i + 1]);
    snprintf(h, sizeof h, "%x:%x:%x:%x:%x:%x:%x:%x", w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]);
    if (!memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16)) snprintf(h, sizeof h, "::");
    else if (!memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16)) snprintf(h, sizeof h, "::1");
  }
  snprintf(out, cap, family == AF_INET6 ? "[%s]:%u" : "%s:%u", h, port);
}

/* "TCP socket 127.0.0.1:6379 (listening)", "TCP socket 127.0.0.1:6379 <-> 127.0.0.1:50000 (established)" */
static void name_sock(const struct tg_inet_sock *x, char *out, size_t cap) {
  char l[80], r[80];
  addr_str(x->family, x->laddr, x->lport, l, sizeof l);
  addr_str(x->family, x->raddr, x->rport, r, sizeof r);
  int peer = x->rport != 0;
  snprintf(out, cap, "%s%s socket %s%s%s (%s)", x->protocol == IPPROTO_TCP ? "TCP" : "UDP", x->family == AF_INET6 ? "v6" : "", l,
           peer ? " <-> " : "", peer ? r : "", state_name(x));
}

/* ---- capture ---- */

static int gopt(int fd, int level, int name, int *v) {
  socklen_t l = sizeof *v;
  *v = 0;
  return tg_sys5(SYS_getsockopt, fd, level, name, v, &l) == 0 ? 0 : -1;
}

static int64_t timeo_us(int fd, int name) {
  struct timeval tv = {0, 0};
  socklen_t l = sizeof tv;
  if (tg_sys5(SYS_getsockopt, fd, SOL_SOCKET, name, &tv, &l) != 0) return 0;
  return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* A listener's backlog (sk_max_ack_backlog: sock_diag's wqueue for a listening socket), found by
 * inode in a dump of the family's listening TCP sockets. 0 if not found. */
struct backlog_ask { uint64_t ino; uint32_t found; };

static int backlog_of(const struct nlmsghdr *h, void *ctx) {
  struct backlog_ask *a = ctx;
  if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return 0;
  const struct inet_diag_msg *m = NLMSG_DATA(h);
  if (m->idiag_inode == a->ino) a->found = m->idiag_wqueue;
  return 0;
}

static uint32_t listen_backlog(uint16_t family, uint64_t ino) {
  struct inet_diag_req_v2 r;
  memset(&r, 0, sizeof r);
  r.sdiag_family = (uint8_t)family;
  r.sdiag_protocol = IPPROTO_TCP;
  r.idiag_states = 1u << 10; /* TCP_LISTEN */
  struct backlog_ask a = {ino, 0};
  (void)tg_res_sock_diag(&r, sizeof r, 1, backlog_of, &a);
  return a.found;
}

static void begin(void) { nsocks = overflow = 0; }

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  if (!S_ISSOCK(p->st->st_mode)) return 1;
  int fd = p->fd, domain, type, proto;
  if (gopt(fd, SOL_SOCKET, SO_DOMAIN, &domain) != 0 || (domain != AF_INET && domain != AF_INET6)) return 1;
  if (gopt(fd, SOL_SOCKET, SO_TYPE, &type) != 0 || gopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto) != 0) return 1;
  if (!(type == SOCK_STREAM && proto == IPPROTO_TCP) && !(type == SOCK_DGRAM && proto == IPPROTO_UDP)) return 1; /* raw, SCTP...: socket.c refuses */
  if (extra_cap < sizeof(struct tg_inet_sock)) { snprintf(err, errlen, "fd %d: no room for the socket record", fd); return -1; }
  struct tg_inet_sock x;
  memset(&x, 0, sizeof x);
  x.ino = p->st->st_ino;
  x.family = (uint16_t)domain;
  x.type = (uint16_t)type;
  x.protocol = (uint16_t)proto;
  struct sockaddr_in6 sa;
  socklen_t sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  if (tg_sys3(SYS_getsockname, fd, &sa, &sl) == 0) {
    if (domain == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
      memcpy(x.laddr, &s4->sin_addr, 4);
      x.lport = ntohs(s4->sin_port);
    } else {
      memcpy(x.laddr, &sa.sin6_addr, 16);
      x.lport = ntohs(sa.sin6_port);
      x.scope_id = sa.sin6_scope_id;
    }
  }
  if (x.lport) x.flags |= TG_INET_BOUND;
  sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  int connected = tg_sys3(SYS_getpeername, fd, &sa, &sl) == 0;
  if (connected) {
    if (domain == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
      memcpy(x.raddr, &s4->sin_addr, 4);
      x.rport = ntohs(s4->sin_port);
    } else {
      memcpy(x.raddr, &sa.sin6_addr, 16);
      x.rport = ntohs(sa.sin6_port);
    }
  }
  if (proto == IPPROTO_TCP) {
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0) {
      snprintf(err, errlen, "fd %d (TCP socket): TCP_INFO failed", fd);
      return -1;
    }
    x.state = ti.tcpi_state;
  } else {
    x.state = connected ? 1 : 7;
  }
  int v;
  if (gopt(fd, SOL_SOCKET, SO_REUSEADDR, &v) == 0 && v) x.opts |= TG_IO_REUSEADDR;
  if (gopt(fd, SOL_SOCKET, SO_REUSEPORT, &v) == 0 && v) x.opts |= TG_IO_REUSEPORT;
  if (gopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v) == 0 && v) x.opts |= TG_IO_KEEPALIVE;
  if (gopt(fd, SOL_SOCKET, SO_BROADCAST, &v) == 0 && v) x.opts |= TG_IO_BROADCAST;
  if (domain == AF_INET6 && gopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v) == 0 && v) x.opts |= TG_IO_V6ONLY;
  if (proto == IPPROTO_TCP) {
    if (gopt(fd, IPPROTO_TCP, TCP_NODELAY, &v) == 0 && v) x.opts |= TG_IO_NODELAY;
    gopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &x.keepidle);
    gopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &x.keepintvl);
    gopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &x.keepcnt);
  }
  gopt(fd, SOL_SOCKET, SO_SNDBUF, &v), x.sndbuf = (uint32_t)v;
  gopt(fd, SOL_SOCKET, SO_RCVBUF, &v), x.rcvbuf = (uint32_t)v;
  x.rcvtimeo_us = timeo_us(fd, SO_RCVTIMEO);
  x.sndtimeo_us = timeo_us(fd, SO_SNDTIMEO);
  if (proto == IPPROTO_TCP && x.state == 10) {
    x.backlog = listen_backlog(x.family, x.ino);
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0) x.rqueue = ti.tcpi_unacked; /* accept queue length */
    if (x.backlog == 0) x.backlog = 128;
  } else {
    int q = 0;
    if (tg_sys3(SYS_ioctl, fd, SIOCINQ, &q) == 0) x.rqueue = (uint32_t)q;
    if (tg_sys3(SYS_ioctl, fd, SIOCOUTQ, &q) == 0) x.wqueue = (uint32_t)q;
  }
  memcpy(extra, &x, sizeof x);
  rec->kind = TG_FD_INET;
  rec->aux = x.ino;
  rec->extra_len = sizeof x;
  if (nsocks < MAX_SOCKS) socks[nsocks++] = (struct seen){fd, x};
  else overflow = 1;
  return 0;
}

/* the other end of an established TCP connection, if it is one of the process's sockets */
static int peer_of(int i) {
  const struct tg_inet_sock *a = &socks[i].x;
  if (a->protocol != IPPROTO_TCP || a->state != 1) return -1;
  for (int j = 0; j < nsocks; j++) {
    const struct tg_inet_sock *b = &socks[j].x;
    if (j == i || b->protocol != IPPROTO_TCP || b->state != 1 || b->family != a->family || b->ino == a->ino) continue;
    if (b->lport == a->rport && b->rport == a->lport && !memcmp(b->laddr, a->raddr, 16) && !memcmp(b->raddr, a->laddr, 16)) return j;
  }
  return -1;
}

/* the remote address is this host's (loopback, or the socket's own address): in a tree's cut the
 * peer may be another process of the app */
static int local_peer(const struct tg_inet_sock *x) {
  static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (!memcmp(x->raddr, x->laddr, 16)) return 1;
  if (x->family == AF_INET) return x->raddr[0] == 127;
  if (!memcmp(x->raddr, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16)) return 1;
  return !memcmp(x->raddr, v4mapped, 12) && x->raddr[12] == 127;
}

static int sopt(int fd, int level, int name, const void *v, socklen_t l) { return (int)tg_sys5(SYS_setsockopt, fd, level, name, v, l); }

/* One established connection, read with TCP_REPAIR and put back out of repair at once (without a
 * window probe): the queues are peeked, nothing is consumed. Returns the bytes of buf used (send
 * queue then receive queue) or -1 with err. */
static int repair_errno; /* why the last repair_read could not turn TCP_REPAIR on (EPERM: no CAP_NET_ADMIN) */
static long repair_read(const struct seen *s, struct tg_rec_inet_repair *r, char *buf, size_t cap, char *err, size_t errlen) {
  int fd = s->fd;
  repair_errno = 0;
  char name[200];
  name_sock(&s->x, name, sizeof name);
  memset(r, 0, sizeof *r);
  r->ino = s->x.ino;
  int on = TCP_REPAIR_ON, off = TCP_REPAIR_OFF_NO_WP;
  long e = sopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on);
  if (e < 0) {
    repair_errno = (int)-e;
    snprintf(err, errlen, "fd %d (%s): TCP_REPAIR: %s (capturing a connection needs CAP_NET_ADMIN%s)", fd, name, strerror((int)-e),
             e == -EPERM ? ", which this process does not have: keep CAP_NET_ADMIN in it when it switches users, or close the connection before checkpointing" : "");
    return -1;
  }
  long used = -1;
  const char *what = "";
  int q, outq = 0, unsent = 0, inq = 0;
  socklen_t l;
  struct tcp_info ti;
  struct tcp_repair_window w;
  if (tg_sys3(SYS_ioctl, fd, SIOCOUTQ, &outq) != 0 || tg_sys3(SYS_ioctl, fd, SIOCOUTQNSD, &unsent) != 0 || tg_sys3(SYS_ioctl, fd, SIOCINQ, &inq) != 0) { what = "queue sizes"; goto out; }
  if ((size_t)outq + (size_t)inq > cap) {
    snprintf(err, errlen, "fd %d (%s): %d bytes are queued in it, more than a checkpoint takes (%zu); checkpoint again in a moment", fd, name, outq + inq, cap);
    goto out_msg;
  }
  q = TCP_SEND_QUEUE;
  l = sizeof r->snd_seq;
  if (sopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) < 0 || tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &r->snd_seq, &l) < 0) { what = "send queue sequence"; goto out; }
  long n = outq ? tg_sys6l(SYS_recvfrom, fd, buf, (size_t)outq, MSG_PEEK | MSG_DONTWAIT, 0, 0) : 0;
  if (n != outq) { what = "peeking at the send queue"; goto out; }
  q = TCP_RECV_QUEUE;
  l = sizeof r->rcv_seq;
  if (sopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) < 0 || tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &r->rcv_seq, &l) < 0) { what = "receive queue sequence"; goto out; }
  n = inq ? tg_sys6l(SYS_recvfrom, fd, buf + outq, (size_t)inq, MSG_PEEK | MSG_DONTWAIT, 0, 0) : 0;
  if (n != inq) { what = "peeking at the receive queue"; goto out; }
  q = TCP_NO_QUEUE;
  sopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q);
  l = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) { what = "TCP_INFO"; goto out; }
  r->options = ti.tcpi_options;
  r->snd_wscale = ti.tcpi_snd_wscale;
  r->rcv_wscale = ti.tcpi_rcv_wscale;
  int mss = 0;
  l = sizeof mss;
  if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_MAXSEG, &mss, &l) < 0) { what = "TCP_MAXSEG"; goto out; }
  r->mss = (uint32_t)mss;
  l = sizeof r->timestamp;
  if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_TIMESTAMP, &r->timestamp, &l) < 0) { what = "TCP_TIMESTAMP"; goto out; }
  l = sizeof w;
  if (tg_sys5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &l) < 0) { what = "TCP_REPAIR_WINDOW"; goto out; }
  r->snd_wl1 = w.snd_wl1, r->snd_wnd = w.snd_wnd, r->max_window = w.max_window, r->rcv_wnd = w.rcv_wnd, r->rcv_wup = w.rcv_wup;
  r->outq_len = (uint32_t)outq;
  r->unsent_len = (uint32_t)unsent;
  r->inq_len = (uint32_t)inq;
  used = outq + inq;
out:
  if (used < 0) snprintf(err, errlen, "fd %d (%s): reading the connection with TCP_REPAIR failed (%s)", fd, name, what);
out_msg:
  e = sopt(fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
  /* leaving repair mode clears the socket's SO_REUSEADDR: put the app's back (a socket of a server
   * that lost it would block the server's next bind on the port while it lingers in TIME-WAIT) */
  int reuse = (s->x.opts & TG_IO_REUSEADDR) ? 1 : 0;
  if (e >= 0) e = sopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse);
  if (e < 0 && used >= 0) {
    snprintf(err, errlen, "fd %d (%s): leaving TCP_REPAIR: %s", fd, name, strerror((int)-e));
    used = -1;
  }
  return used;
}

static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen;
  if (overflow) { snprintf(err, errlen, "more than %d TCP/UDP sockets: not supported", MAX_SOCKS); return -1; }
  if (!emit) return 0;
  static char data[REPAIR_CAP];
  size_t external_bytes = 0;
  for (int i = 0; i < nsocks; i++) {
    int dup = 0;
    for (int j = 0; j < i; j++) if (socks[j].x.ino == socks[i].x.ino) dup = 1;
    if (dup || socks[i].x.protocol != IPPROTO_TCP || socks[i].x.state != 1) continue;
    int inside = peer_of(i) >= 0;
    struct tg_rec_inet_repair r;
    long n;
    if (inside) {
      n = repair_read(&socks[i], &r, data, sizeof data, err, errlen);
      if (n < 0) return -1;
    } else if (tg_res_tree && local_peer(&socks[i].x)) {
      /* a tree's cut, a peer on this host: it may be another process of the app, whose end the
       * restorer pairs with this one (tree-fds.c): read as a connection inside (all its queues, a
       * failure refuses); with no such end in the tree it is an outside one */
      n = repair_read(&socks[i], &r, data, sizeof data, err, errlen);
      /* a process that gave up root (an nginx worker as nobody) cannot read it: no record. If the
       * other end is in the app too, the restorer refuses it by name (or, with --allow-closed-tcp,
       * restores it closed by its peer); else it is one to outside, which comes back closed
       * (docs/engine.md, "Processes of another user") */
      if (n < 0 && repair_errno == EPERM) { err[0] = 0; continue; }
      if (n < 0) return -1;
      r.flags |= TG_IR_EXTERNAL | TG_IR_LOCAL;
    } else {
      /* a peer outside: its state serves only a planned restore that holds its traffic (after a
       * crash it comes back closed), so it is recorded when it can be, within a budget, and a
       * connection that cannot be read is simply left without one */
      char e2[512];
      size_t room = external_bytes < EXTERNAL_CAP ? EXTERNAL_CAP - external_bytes : 0;
      n = repair_read(&socks[i], &r, data, room < EXTERNAL_ONE ? room : EXTERNAL_ONE, e2, sizeof e2);
      if (n < 0) continue;
      external_bytes += (size_t)n;
      r.flags |= TG_IR_EXTERNAL;
    }
    int we = emit(ctx, TG_REC_INET_REPAIR, &r, sizeof r, data, (size_t)n);
    if (we != 0) {
      snprintf(err, errlen, "recording the TCP connection of fd %d: %s", socks[i].fd, strerror(we));
      return -1;
    }
  }
  return 0;
}

/* ---- restore ---- */

static int extra_of(const struct img_fd *f, struct tg_inet_sock *x) {
  if (f->r.extra_len < sizeof *x) return -1;
  memcpy(x, f->extra, sizeof *x);
  return 0;
}

static socklen_t make_addr(const struct tg_inet_sock *x, const uint8_t *a, uint16_t port, struct sockaddr_in6 *sa) {
  memset(sa, 0, sizeof *sa);
  if (x->family == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, a, 4);
    s4->sin_port = htons(port);
    return sizeof *s4;
  }
  sa->sin6_family = AF_INET6;
  memcpy(&sa->sin6_addr, a, 16);
  sa->sin6_port = htons(port);
  if (a == x->laddr) sa->sin6_scope_id = x->scope_id;
  return sizeof *sa;
}

/* Who holds port `port` of this protocol on this host: "pid 123 (nc)", or what /proc/net shows. */
static void holder(const struct tg_inet_sock *x, char *out, size_t cap) {
  const char *tables[2];
  tables[0] = x->protocol == IPPROTO_TCP ? "/proc/net/tcp" : "/proc/net/udp";
  tables[1] = x->protocol == IPPROTO_TCP ? "/proc/net/tcp6" : "/proc/net/udp6";
  unsigned long inodes[16];
  int ni = 0, timewait = 0;
  static char buf[1 << 20];
  for (int t = 0; t < 2; t++) {
    if (tg_read_file(tables[t], buf, sizeof buf) <= 0) continue;
    for (char *line = strchr(buf, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
      char local[64], rem[64];
      unsigned st = 0;
      unsigned long ino = 0;
      if (sscanf(line + 1, "%*s %63s %63s %x %*s %*s %*s %*s %*s %lu", local, rem, &st, &ino) != 4) continue;
      char *c = strrchr(local, ':');
      if (!c || strtoul(c + 1, NULL, 16) != x->lport) continue;
      if (x->protocol == IPPROTO_TCP && st == 6) timewait = 1;
      if (ino && ni < 16) inodes[ni++] = ino;
    }
  }
  out[0] = 0;
  DIR *d = opendir("/proc");
  for (struct dirent *e; d && (e = readdir(d)) && !out[0];) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/%s/fd", e->d_name);
    DIR *fdd = opendir(path);
    for (struct dirent *f; fdd && (f = readdir(fdd)) && !out[0];) {
      char lp[600], t[64];
      snprintf(lp, sizeof lp, "/proc/%s/fd/%s", e->d_name, f->d_name);
      ssize_t n = readlink(lp, t, sizeof t - 1);
      if (n <= 8) continue;
      t[n] = 0;
      unsigned long ino;
      if (sscanf(t, "socket:[%lu]", &ino) != 1) continue;
      for (int k = 0; k < ni; k++)
        if (inodes[k] == ino) {
          char cp[300], comm[64] = "?";
          snprintf(cp, sizeof cp, "/proc/%s/comm", e->d_name);
          if (tg_read_file(cp, comm, sizeof comm) > 0) comm[strcspn(comm, "\n")] = 0;
          snprintf(out, cap, "held by pid %s (%s) on this host", e->d_name, comm);
        }
    }
    if (fdd) closedir(fdd);
  }
  if (d) closedir(d);
  if (!out[0]) snprintf(out, cap, ni ? "held by a socket no process shows (another network namespace's, or one being closed)" : timewait ? "connections in TIME-WAIT use it" : "held by another socket");
}

static int set_common(int s, const struct tg_inet_sock *x, const struct img_fd *f, char *err, size_t errlen) {
  int one = 1, zero = 0, v;
  int fresh;
  socklen_t l = sizeof fresh;
#define SET(level, name, val, what) do { v = (val); if (setsockopt(s, level, name, &v, sizeof v) != 0) { snprintf(err, errlen, "fd %u: %s: %s", f->r.fd, what, strerror(errno)); return -1; } } while (0)
  if (x->opts & TG_IO_REUSEPORT) SET(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
  if (x->opts & TG_IO_KEEPALIVE) SET(SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
  if (x->opts & TG_IO_BROADCAST) SET(SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
  if (x->family == AF_INET6) SET(IPPROTO_IPV6, IPV6_V6ONLY, (x->opts & TG_IO_V6ONLY) ? 1 : 0, "IPV6_V6ONLY");
  if (x->protocol == IPPROTO_TCP) {
    if (x->opts & TG_IO_NODELAY) SET(IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    if (x->keepidle > 0) SET(IPPROTO_TCP, TCP_KEEPIDLE, x->keepidle, "TCP_KEEPIDLE");
    if (x->keepintvl > 0) SET(IPPROTO_TCP, TCP_KEEPINTVL, x->keepintvl, "TCP_KEEPINTVL");
    if (x->keepcnt > 0) SET(IPPROTO_TCP, TCP_KEEPCNT, x->keepcnt, "TCP_KEEPCNT");
  }
  /* buffer sizes only where the app set them: setting one turns the kernel's autotuning off (a
   * fresh socket of the kind has the default; getsockopt gives the doubled value set* halves) */
  if (getsockopt(s, SOL_SOCKET, SO_SNDBUF, &fresh, &l) == 0 && (uint32_t)fresh != x->sndbuf && x->sndbuf / 2 > 0) {
    v = (int)(x->sndbuf / 2);
    if (setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) != 0) setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  }
  l = sizeof fresh;
  if (getsockopt(s, SOL_SOCKET, SO_RCVBUF, &fresh, &l) == 0 && (uint32_t)fresh != x->rcvbuf && x->rcvbuf / 2 > 0) {
    v = (int)(x->rcvbuf / 2);
    if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) != 0) setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
  }
  struct timeval tv;
  for (int k = 0; k < 2; k++) {
    int64_t us = k ? x->sndtimeo_us : x->rcvtimeo_us;
    if (us <= 0) continue;
    tv.tv_sec = us / 1000000;
    tv.tv_usec = us % 1000000;
    if (setsockopt(s, SOL_SOCKET, k ? SO_SNDTIMEO : SO_RCVTIMEO, &tv, sizeof tv) != 0) { snprintf(err, errlen, "fd %u: socket timeout: %s", f->r.fd, strerror(errno)); return -1; }
  }
  (void)one, (void)zero;
  return 0;
}

/* Binds on the recorded address. SO_REUSEADDR is on for the bind (the killed app's connections
 * may linger in TIME-WAIT on the port; a live listener still makes bind fail) and then set as the
 * app had it. */
static int bind_same(int s, const struct tg_inet_sock *x, const struct img_fd *f, char *err, size_t errlen) {
  struct sockaddr_in6 sa;
  socklen_t sl = make_addr(x, x->laddr, x->lport, &sa);
  int one = 1, app = (x->opts & TG_IO_REUSEADDR) ? 1 : 0;
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) { snprintf(err, errlen, "fd %u: SO_REUSEADDR: %s", f->r.fd, strerror(errno)); return -1; }
  if (bind(s, (struct sockaddr *)&sa, sl) != 0) {
    int e = errno;
    char name[200], who[200] = "";
    name_sock(x, name, sizeof name);
    if (e == EADDRINUSE) {
      holder(x, who, sizeof who);
      snprintf(err, errlen, "fd %u (%s): the address is taken: %s. Stop that program or free the port, then restore again", f->r.fd, name, who);
    } else if (e == EADDRNOTAVAIL) {
      snprintf(err, errlen, "fd %u (%s): this host has no such address (bind: %s). Restore on a host that has it, or add the address", f->r.fd, name, strerror(e));
    } else {
      snprintf(err, errlen, "fd %u (%s): bind: %s", f->r.fd, name, strerror(e));
    }
    return -1;
  }
  /* a listener keeps it through listen() (a connection of a process tree, made before it, may be
   * bound on the port already: tree-fds.c), then has the app's value */
  if (x->protocol == IPPROTO_TCP && x->state == 10) return 0;
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &app, sizeof app) != 0) { snprintf(err, errlen, "fd %u: SO_REUSEADDR: %s", f->r.fd, strerror(errno)); return -1; }
  return 0;
}

/* A connection whose peer has seen it drop: a socket of the same family in the state a reset leaves
 * (closed, ECONNRESET pending), made by connecting to a private loopback listener whose accepted end
 * is closed with a zero linger (it sends the reset). fin: the accepted end is closed plainly
 * instead (it sends a FIN): a connection its peer closed, whose next read gets end of file (and a
 * write after that EPIPE, once the gone peer answered the first with a reset). */
static int make_dropped(const struct tg_inet_sock *x, const struct img_fd *f, int fin, char *err, size_t errlen) {
  int fam = x->family;
  int l = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP), c = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP), a = -1;
  struct sockaddr_in6 sa;
  socklen_t sl;
  memset(&sa, 0, sizeof sa);
  if (fam == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
    s4->sin_family = AF_INET;
    s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sl = sizeof *s4;
  } else {
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    sl = sizeof sa;
  }
  const char *step = "socket";
  if (l < 0 || c < 0) goto fail;
  step = "bind";
  if (bind(l, (struct sockaddr *)&sa, sl) != 0) goto fail;
  step = "listen";
  sl = sizeof sa;
  if (listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&sa, &sl) != 0) goto fail;
  step = "connect";
  if (connect(c, (struct sockaddr *)&sa, sl) != 0) goto fail;
  step = "accept";
  if ((a = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0) goto fail;
  struct linger lg = {1, 0};
  step = "SO_LINGER";
  if (!fin && setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) goto fail;
  close(a);
  a = -1;
  close(l);
  l = -1;
  /* the reset (or FIN) is taken by the kernel at once on loopback; wait for it (a few seconds at most) */
  struct pollfd pf = {c, POLLERR | POLLHUP | POLLRDHUP, 0};
  step = fin ? "waiting for the end of file" : "waiting for the reset";
  if (poll(&pf, 1, 5000) <= 0) goto fail;
  if (fcntl(c, F_SETFL, tg_res_status_flags(f->r.open_flags)) != 0) { step = "fcntl"; goto fail; }
  return c;
fail:;
  int e = errno;
  char name[200];
  name_sock(x, name, sizeof name);
  snprintf(err, errlen, "fd %u (%s): making it a closed connection: %s: %s", f->r.fd, name, step, strerror(e));
  if (l >= 0) close(l);
  if (c >= 0) close(c);
  if (a >= 0) close(a);
  return -1;
}

static const struct img_inet_repair *repair_of(const struct tg_fd_restore *rc, uint64_t ino) {
  for (size_t k = 0; k < rc->nrepairs; k++) {
    const struct img_inet_repair *ir = &rc->repairs[k];
    if (ir->h.ino != ino) continue;
    if (!(ir->h.flags & TG_IR_EXTERNAL)) return ir;
    for (size_t j = 0; j < rc->nkeep_conns; j++) if (rc->keep_conns[j] == ino) return ir; /* held by the daemon */
    return NULL;
  }
  return NULL;
}

/* An established connection with its peer inside: made with TCP_REPAIR (no handshake), sequence
 * numbers, options, window and both queues as captured. */
static int make_repaired(const struct tg_inet_sock *x, const struct img_fd *f, const struct img_inet_repair *ir, char *err, size_t errlen) {
  const struct tg_rec_inet_repair *r = &ir->h;
  int s = socket(x->family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  const char *step = "socket";
  int on = TCP_REPAIR_ON, q;
  uint32_t seq;
  struct sockaddr_in6 sa;
  socklen_t sl;
  if (s < 0) goto fail;
  step = "TCP_REPAIR";
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) goto fail;
  step = "send queue sequence";
  q = TCP_SEND_QUEUE;
  seq = r->snd_seq - r->outq_len;
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) != 0 || setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, sizeof seq) != 0) goto fail;
  step = "receive queue sequence";
  q = TCP_RECV_QUEUE;
  seq = r->rcv_seq - r->inq_len;
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) != 0 || setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, sizeof seq) != 0) goto fail;
  if (set_common(s, x, f, err, errlen) != 0) { close(s); return -1; }
  step = "bind";
  sl = make_addr(x, x->laddr, x->lport, &sa);
  if (bind(s, (struct sockaddr *)&sa, sl) != 0) goto fail;
  step = "connect";
  sl = make_addr(x, x->raddr, x->rport, &sa);
  if (connect(s, (struct sockaddr *)&sa, sl) != 0) goto fail;
  struct tcp_repair_opt opts[4];
  int no = 0;
  opts[no++] = (struct tcp_repair_opt){TCPOPT_MAXSEG, r->mss};
  if (r->options & TCPI_OPT_WSCALE) opts[no++] = (struct tcp_repair_opt){TCPOPT_WINDOW, r->snd_wscale | (r->rcv_wscale << 16)};
  if (r->options & TCPI_OPT_SACK) opts[no++] = (struct tcp_repair_opt){TCPOPT_SACK_PERMITTED, 0};
  if (r->options & TCPI_OPT_TIMESTAMPS) opts[no++] = (struct tcp_repair_opt){TCPOPT_TIMESTAMP, 0};
  step = "TCP_REPAIR_OPTIONS";
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, (socklen_t)(no * sizeof *opts)) != 0) goto fail;
  step = "TCP_TIMESTAMP";
  if ((r->options & TCPI_OPT_TIMESTAMPS) && setsockopt(s, IPPROTO_TCP, TCP_TIMESTAMP, &r->timestamp, sizeof r->timestamp) != 0) goto fail;
  /* the receive queue, then the part of the send queue that was sent (unacknowledged); the unsent
   * part is sent normally once out of repair */
  const char *out = ir->data, *in = ir->data + r->outq_len;
  size_t sent_part = r->outq_len - r->unsent_len;
  for (int k = 0; k < 2; k++) {
    q = k ? TCP_SEND_QUEUE : TCP_RECV_QUEUE;
    const char *p = k ? out : in;
    size_t len = k ? sent_part : r->inq_len;
    step = k ? "refilling the send queue" : "refilling the receive queue";
    if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) != 0) goto fail;
    for (size_t w = 0; w < len;) {
      ssize_t n = send(s, p + w, len - w, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) goto fail;
      w += (size_t)n;
    }
  }
  struct tcp_repair_window win = {r->snd_wl1, r->snd_wnd, r->max_window, r->rcv_wnd, r->rcv_wup};
  step = "TCP_REPAIR_WINDOW";
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, sizeof win) != 0) goto fail;
  /* still in repair: out of it in settle, once the other end exists too (a segment sent before
   * would find no socket and be answered with a reset) */
  return s;
fail:;
  int e = errno;
  char name[200];
  name_sock(x, name, sizeof name);
  snprintf(err, errlen, "fd %u (%s): restoring the connection with TCP_REPAIR: %s: %s%s", f->r.fd, name, step, strerror(e),
           e == EPERM ? " (restoring a connection whole needs CAP_NET_ADMIN: restore as root, or with --allow-closed-tcp to restore it as closed by its peer)" : "");
  if (s >= 0) close(s);
  errno = e;
  return -1;
}

static int established_tcp(const struct img_fd *f, struct tg_inet_sock *x);

/* Is b the other end of connection a (addresses crossed)? */
static int other_end(const struct tg_inet_sock *a, const struct tg_inet_sock *b) {
  return b->family == a->family && b->ino != a->ino && b->lport == a->rport && b->rport == a->lport && !memcmp(b->laddr, a->raddr, 16) && !memcmp(b->raddr, a->laddr, 16);
}

/* The record of this process holding the other end of connection x (record i), or -1. */
static int peer_in(const struct tg_fd_restore *rc, size_t i, const struct tg_inet_sock *x) {
  for (size_t j = 0; j < rc->nfds; j++) {
    struct tg_inet_sock y;
    if (j != i && established_tcp(&rc->fds[j], &y) && other_end(x, &y)) return (int)j;
  }
  return -1;
}

/* A connection with both ends in the app (records i and j; pids, or -1 for one process) whose
 * TCP_REPAIR state the checkpoint lacks for an end: refused, naming it (without
 * --allow-closed-tcp). */
static int refuse_unread(const struct tg_fd_restore *rc, size_t i, size_t j, int pid_i, int pid_j, char *err, size_t errlen) {
  struct tg_inet_sock a;
  char name[200], pi[24] = "", pj[24] = "";
  memset(&a, 0, sizeof a);
  extra_of(&rc->fds[i], &a); /* (an established TCP socket's record: checked by the caller) */
  name_sock(&a, name, sizeof name);
  if (pid_i >= 0) snprintf(pi, sizeof pi, " of pid %d", pid_i);
  if (pid_j >= 0) snprintf(pj, sizeof pj, " of pid %d", pid_j);
  snprintf(err, errlen,
           "fd %u%s (%s) cannot be restored whole: its other end, fd %u%s, is in the app too, and the checkpoint holds no TCP_REPAIR state "
           "for the connection (a process without CAP_NET_ADMIN, such as one that switched to another user, cannot read it). Restore with "
           "--allow-closed-tcp to have both ends come back as a connection closed by its peer (the next read gets end of file), or keep "
           "CAP_NET_ADMIN in the processes that hold such connections",
           rc->fds[i].r.fd, pi, name, rc->fds[j].r.fd, pj);
  return -1;
}

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_inet_sock x;
  if (extra_of(f, &x) != 0) { snprintf(err, errlen, "fd %u: TCP/UDP socket record without its socket data", f->r.fd); return -1; }
  int s = -1;
  if (x.protocol == IPPROTO_TCP && x.state != 10 && x.state != 7) {
    const struct img_inet_repair *ir = repair_of(rc, x.ino);
    int p = ir ? -1 : peer_in(rc, i, &x);
    if (p >= 0 && !tg_res_tcp_closed) return refuse_unread(rc, i, (size_t)p, -1, -1, err, errlen);
    s = ir ? make_repaired(&x, f, ir, err, errlen) : make_dropped(&x, f, p >= 0, err, errlen);
    /* a restorer without CAP_NET_ADMIN cannot use TCP_REPAIR: with --allow-closed-tcp, closed by its peer */
    if (s < 0 && ir && errno == EPERM && tg_res_tcp_closed && (s = make_dropped(&x, f, 1, err, errlen)) >= 0) {
      char name[200];
      name_sock(&x, name, sizeof name);
      fprintf(stderr, "tardigrade-restore: fd %u (%s): restored closed by its peer (--allow-closed-tcp): no CAP_NET_ADMIN for TCP_REPAIR\n", f->r.fd, name);
    }
    if (s < 0) return -1;
    rc->tmp[i] = tg_res_high(s, rc->tmp_base, err, errlen);
    return rc->tmp[i] < 0 ? -1 : 0;
  }
  s = socket(x.family, x.type | SOCK_CLOEXEC, x.protocol);
  if (s < 0) { snprintf(err, errlen, "fd %u: socket: %s", f->r.fd, strerror(errno)); return -1; }
  if (set_common(s, &x, f, err, errlen) != 0 || ((x.flags & TG_INET_BOUND) && bind_same(s, &x, f, err, errlen) != 0)) { close(s); return -1; }
  if (x.protocol == IPPROTO_TCP && x.state == 10) {
    int app = (x.opts & TG_IO_REUSEADDR) ? 1 : 0;
    if (listen(s, (int)x.backlog) != 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &app, sizeof app) != 0) {
      snprintf(err, errlen, "fd %u: listen: %s", f->r.fd, strerror(errno));
      close(s);
      return -1;
    }
  }
  if (x.protocol == IPPROTO_UDP && x.state == 1) {
    struct sockaddr_in6 sa;
    socklen_t sl = make_addr(&x, x.raddr, x.rport, &sa);
    if (connect(s, (struct sockaddr *)&sa, sl) != 0) {
      char name[200];
      name_sock(&x, name, sizeof name);
      snprintf(err, errlen, "fd %u (%s): connect: %s", f->r.fd, name, strerror(errno));
      close(s);
      return -1;
    }
  }
  if (fcntl(s, F_SETFL, tg_res_status_flags(f->r.open_flags)) != 0) { snprintf(err, errlen, "fd %u: fcntl: %s", f->r.fd, strerror(errno)); close(s); return -1; }
  rc->tmp[i] = tg_res_high(s, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

/* Socket s, made by make_repaired, leaves repair mode (its peer exists): the window probe and the
 * unsent part of its send queue go out now. reuse: SO_REUSEADDR from then on. */
static int leave_repair(int s, const struct tg_inet_sock *px, const struct img_fd *f, const struct img_inet_repair *ir, int reuse, char *err, size_t errlen) {
  struct tg_inet_sock x = *px;
  int off = TCP_REPAIR_OFF;
  const struct tg_rec_inet_repair *r = &ir->h;
  const char *step = "leaving TCP_REPAIR";
  if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) != 0) goto fail;
  step = "SO_REUSEADDR";
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse) != 0) goto fail;
  step = "sending the unsent data";
  size_t sent_part = r->outq_len - r->unsent_len;
  for (size_t w = 0; w < r->unsent_len;) {
    ssize_t n = send(s, ir->data + sent_part + w, r->unsent_len - w, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) goto fail;
    w += (size_t)n;
  }
  step = "fcntl";
  if (fcntl(s, F_SETFL, tg_res_status_flags(f->r.open_flags)) != 0) goto fail;
  return 0;
fail:;
  int e = errno;
  char name[200];
  name_sock(&x, name, sizeof name);
  snprintf(err, errlen, "fd %u (%s): restoring the connection with TCP_REPAIR: %s: %s", f->r.fd, name, step, strerror(e));
  return -1;
}

/* A connection restored whole leaves repair mode once every fd is in place (its peer exists). */
static int settle(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  struct tg_inet_sock x;
  if (extra_of(f, &x) != 0) return 0;
  const struct img_inet_repair *ir = repair_of(rc, x.ino);
  if (!ir || x.protocol != IPPROTO_TCP || x.state == 10 || x.state == 7) return 0;
  int rep = 0;
  socklen_t rl = sizeof rep;
  if (tg_res_tcp_closed && getsockopt((int)f->r.fd, IPPROTO_TCP, TCP_REPAIR, &rep, &rl) == 0 && !rep) return 0; /* made closed instead */
  return leave_repair((int)f->r.fd, &x, f, ir, (x.opts & TG_IO_REUSEADDR) ? 1 : 0 /* leaving repair cleared it */, err, errlen);
}

/* A process tree: connections with their two ends in two processes of the tree, made whole by the
 * init before the tree is cloned (both ends exist before either leaves repair mode). */
static const struct img_inet_repair *any_repair(const struct tg_fd_restore *all, uint64_t ino) {
  for (size_t k = 0; k < all->nrepairs; k++) if (all->repairs[k].h.ino == ino) return &all->repairs[k];
  return NULL;
}

static int established_tcp(const struct img_fd *f, struct tg_inet_sock *x) {
  return f->r.kind == TG_FD_INET && !f->r.reserved && extra_of(f, x) == 0 && x->protocol == IPPROTO_TCP && x->state == 1;
}

TG_RES_HIDDEN int tg_inet_tree_pairs(struct tg_fd_restore *all, const int *pid_of, uint64_t *made, size_t *nmade, char *err, size_t errlen) {
  *nmade = 0;
  for (size_t i = 0; i < all->nfds; i++) {
    struct tg_inet_sock a, b;
    if (all->tmp[i] >= 0 || !established_tcp(&all->fds[i], &a)) continue;
    int done = 0;
    for (size_t k = 0; k < *nmade; k++) done |= made[k] == a.ino;
    if (done) continue; /* its other holders take it (the same socket in two processes) */
    size_t j = all->nfds;
    for (size_t k = 0; k < all->nfds && j == all->nfds; k++)
      if (pid_of[k] != pid_of[i] && established_tcp(&all->fds[k], &b) && other_end(&a, &b)) j = k;
    if (j == all->nfds) continue; /* not a pair split between two processes: each process's own */
    const struct img_inet_repair *ra = any_repair(all, a.ino), *rb = any_repair(all, b.ino);
    const struct img_fd *fa = &all->fds[i], *fb = &all->fds[j];
    int sa, sb;
    if (ra && rb) {
      sa = make_repaired(&a, fa, ra, err, errlen);
      if (sa < 0 && !(errno == EPERM && tg_res_tcp_closed)) return -1;
      sb = sa < 0 ? -1 : make_repaired(&b, fb, rb, err, errlen);
      if (sa >= 0 && sb < 0) { close(sa); return -1; }
    } else sa = sb = -1;
    if (sa >= 0) {
      /* SO_REUSEADDR stays on (decision): a listener on the same port is bound after these, in its
       * own process, and a bind beside a connection without it fails */
      if (leave_repair(sa, &a, fa, ra, 1, err, errlen) != 0 || leave_repair(sb, &b, fb, rb, 1, err, errlen) != 0) { close(sa); close(sb); return -1; }
    } else if (!tg_res_tcp_closed) {
      return refuse_unread(all, ra ? j : i, ra ? i : j, pid_of[ra ? j : i], pid_of[ra ? i : j], err, errlen);
    } else {
      /* --allow-closed-tcp: both ends closed by their peer */
      sa = make_dropped(&a, fa, 1, err, errlen);
      if (sa < 0) return -1;
      sb = make_dropped(&b, fb, 1, err, errlen);
      if (sb < 0) { close(sa); return -1; }
    }
    all->tmp[i] = tg_res_high(sa, all->tmp_base, err, errlen);
    if (all->tmp[i] < 0) { close(sb); return -1; }
    all->tmp[j] = tg_res_high(sb, all->tmp_base, err, errlen);
    if (all->tmp[j] < 0) return -1;
    made[(*nmade)++] = a.ino;
    made[(*nmade)++] = b.ino;
  }
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_INET; }

const struct tg_fd_ops tg_fd_inet = {.name = "inet", .describe = describe, .begin = begin, .end = end, .owns = owns, .open = open_one, .settle = settle};
