/* Helpers shared by the resource kinds (resource.h). */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/sys.h"

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

int tg_res_sock_diag(const void *body, size_t body_len, int dump, int (*each)(const struct nlmsghdr *h, void *ctx), void *ctx) {
  static struct { struct nlmsghdr h; char body[128]; } req __attribute__((aligned(8)));
  static char buf[16384] __attribute__((aligned(8)));
  if (body_len > sizeof req.body) return -EINVAL;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = (uint32_t)(sizeof req.h + body_len);
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | (dump ? NLM_F_DUMP : 0));
  req.h.nlmsg_seq = 1;
  memcpy(req.body, body, body_len);
  long nl = tg_sys3(SYS_socket, AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return (int)nl;
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  int rc = 0;
  long r = tg_sys6l(SYS_sendto, nl, &req, req.h.nlmsg_len, 0, &sa, sizeof sa);
  if (r < 0) rc = (int)r;
  for (int done = rc != 0; !done;) {
    do r = tg_sys6l(SYS_recvfrom, nl, buf, sizeof buf, 0, 0, 0);
    while (r == -EINTR);
    if (r < 0) { rc = (int)r; break; }
    if (r == 0) break;
    done = !dump; /* a lookup is answered in one message; a dump ends with NLMSG_DONE */
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned long)r); h = NLMSG_NEXT(h, r)) {
      if (h->nlmsg_type == NLMSG_DONE) { done = 1; break; }
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        rc = h->nlmsg_len >= NLMSG_LENGTH(sizeof *e) ? e->error : -EIO;
        done = 1;
        break;
      }
      if ((rc = each(h, ctx)) != 0) { done = 1; break; }
    }
  }
  tg_sys1(SYS_close, nl);
  return rc;
}

TG_RES_HIDDEN int tg_res_tree;
TG_RES_HIDDEN int tg_res_ext_unix_closed;
TG_RES_HIDDEN int tg_res_tcp_closed;

void tg_res_sock_buf(int fd, int force, int plain, uint32_t v) {
  int half = (int)(v / 2);
  if (half > 0 && setsockopt(fd, SOL_SOCKET, force, &half, sizeof half) != 0) setsockopt(fd, SOL_SOCKET, plain, &half, sizeof half);
}

int tg_res_unix_bind_again(int s, int type, const struct sockaddr_un *sa, unsigned sl, uint32_t mode, uint32_t sndbuf, uint32_t rcvbuf,
                           uint32_t flags, unsigned fd, const char *what, const char *busy, const char *shown, char *err, size_t errlen) {
  if (sa->sun_path[0]) {
    struct stat st;
    if (lstat(sa->sun_path, &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "fd %u: cannot %s %s again: a file that is not a socket is there now", fd, what, shown);
        return -1;
      }
      int probe = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
      int live = probe >= 0 && connect(probe, (const struct sockaddr *)sa, sl) == 0;
      if (probe >= 0) close(probe);
      if (live) {
        snprintf(err, errlen, "fd %u: cannot %s %s again: another process %s on it now (stop it and restore again)", fd, what, shown, busy);
        return -1;
      }
      unlink(sa->sun_path); /* the dead process's socket file */
    }
  }
  if (bind(s, (const struct sockaddr *)sa, sl) != 0) {
    snprintf(err, errlen, "fd %u: cannot %s %s again: bind: %s%s", fd, what, shown, strerror(errno),
             errno == EADDRINUSE ? " (another process holds the name now: stop it and restore again)" : "");
    return -1;
  }
  if (sa->sun_path[0] && chmod(sa->sun_path, mode) != 0) {
    snprintf(err, errlen, "fd %u: chmod %s: %s", fd, shown, strerror(errno));
    return -1;
  }
  tg_res_sock_buf(s, SO_SNDBUFFORCE, SO_SNDBUF, sndbuf);
  tg_res_sock_buf(s, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf);
  int on = 1;
  if ((flags & 1) && setsockopt(s, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) {
    snprintf(err, errlen, "fd %u: SO_PASSCRED: %s", fd, strerror(errno));
    return -1;
  }
  return 0;
}
