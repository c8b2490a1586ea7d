/* Sockets no other kind took (raw, netlink, packet, SCTP...): refused, named from /proc/self/net so
 * that the message says which connection or listener it is. TCP and UDP are inet.c's, Unix sockets unix.c's. */
#include "resource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/readfile.h"
#include "../common/sys.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* Describe a socket from /proc/self/net/{tcp,tcp6,udp,udp6,unix} for the refusal message. */
static void describe_socket(unsigned long long ino, char *out, size_t cap) {
  static const char *tables[] = {"tcp", "tcp6", "udp", "udp6", "unix"};
  static char buf[1 << 16];
  for (size_t t = 0; t < sizeof tables / sizeof *tables; t++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/net/%s", tables[t]);
    if (tg_read_file(path, buf, sizeof buf) <= 0) continue;
    for (char *line = strchr(buf, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
      char *l = line + 1;
      char *e = strchr(l, '\n');
      if (e) *e = 0;
      int is_unix = t == 4;
      /* tcp/udp: sl local rem st tx:rx tr:when retr uid timeout inode; unix: Num RefCount Protocol Flags Type St Inode Path */
      char local[64] = "", rem[64] = "", st[8] = "", upath[108] = "";
      unsigned long long inode = 0;
      int ok;
      if (is_unix) {
        char num[32], ref[16], proto[16], flags[16], type[8], state[8];
        ok = sscanf(l, "%31s %15s %15s %15s %7s %7s %llu %107s", num, ref, proto, flags, type, state, &inode, upath) >= 7;
      } else {
        char sl[16], txrx[40], trw[40], retr[16], uid[16], tmo[16];
        ok = sscanf(l, "%15s %63s %63s %7s %39s %39s %15s %15s %15s %llu", sl, local, rem, st, txrx, trw, retr, uid, tmo, &inode) == 10;
      }
      if (e) *e = '\n';
      if (!ok || inode != ino) continue;
      if (is_unix) { snprintf(out, cap, "Unix socket%s%s", upath[0] ? " " : "", upath); return; }
      unsigned a = 0, port = 0, rport = 0, ra = 0;
      char human[64] = "", rhuman[64] = "";
      if (t == 0 || t == 2) {
        sscanf(local, "%x:%x", &a, &port);
        sscanf(rem, "%x:%x", &ra, &rport);
        snprintf(human, sizeof human, "%u.%u.%u.%u:%u", a & 255, (a >> 8) & 255, (a >> 16) & 255, a >> 24, port);
        snprintf(rhuman, sizeof rhuman, "%u.%u.%u.%u:%u", ra & 255, (ra >> 8) & 255, (ra >> 16) & 255, ra >> 24, rport);
      } else {
        char *c = strchr(local, ':');
        port = c ? (unsigned)strtoul(c + 1, NULL, 16) : 0;
        snprintf(human, sizeof human, "[ipv6]:%u", port);
        c = strchr(rem, ':');
        rport = c ? (unsigned)strtoul(c + 1, NULL, 16) : 0;
        snprintf(rhuman, sizeof rhuman, "[ipv6]:%u", rport);
      }
      int tcp = t < 2;
      unsigned state = (unsigned)strtoul(st, NULL, 16);
      if (tcp && state == 0x0A) snprintf(out, cap, "TCP socket listening on %s", human);
      else snprintf(out, cap, "%s socket %s -> %s", tcp ? "TCP" : "UDP", human, rhuman);
      return;
    }
  }
  snprintf(out, cap, "socket");
}

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  (void)rec, (void)extra, (void)extra_cap;
  if (!S_ISSOCK(p->st->st_mode)) return 1;
  char what[256];
  int dom = -1, type = -1, proto = -1;
  socklen_t l = sizeof dom;
  tg_sys5(SYS_getsockopt, p->fd, SOL_SOCKET, SO_DOMAIN, &dom, &l);
  l = sizeof type;
  tg_sys5(SYS_getsockopt, p->fd, SOL_SOCKET, SO_TYPE, &type, &l);
  l = sizeof proto;
  tg_sys5(SYS_getsockopt, p->fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l);
  static const char *nl[] = {"route", "unused", "usersock", "firewall", "sock_diag", "nflog", "xfrm", "selinux", "iscsi", "audit",
                             "fib_lookup", "connector", "netfilter", "ip6_fw", "dnrtmsg", "kobject_uevent", "generic"};
  if (dom == AF_NETLINK)
    snprintf(what, sizeof what, "netlink socket, protocol %d (%s)", proto, proto >= 0 && proto < (int)(sizeof nl / sizeof *nl) ? nl[proto] : "?");
  else if (dom == AF_PACKET)
    snprintf(what, sizeof what, "packet socket (%s)", type == SOCK_RAW ? "raw" : type == SOCK_DGRAM ? "datagram" : "other");
  else if ((dom == AF_INET || dom == AF_INET6) && type == SOCK_RAW)
    snprintf(what, sizeof what, "raw %s socket, IP protocol %d", dom == AF_INET ? "IPv4" : "IPv6", proto);
  else if ((dom == AF_INET || dom == AF_INET6) && proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    snprintf(what, sizeof what, "%s socket of type %d, IP protocol %d (not TCP or UDP)", dom == AF_INET ? "IPv4" : "IPv6", type, proto);
  else
    describe_socket((unsigned long long)p->st->st_ino, what, sizeof what);
  snprintf(err, errlen,
           "fd %d (%s, %s) cannot be checkpointed: this kind of file descriptor is not supported yet; "
           "close it in the application or run it without it",
           p->fd, p->target, what);
  return -1;
}

static int owns(uint32_t k) { (void)k; return 0; }

const struct tg_fd_ops tg_fd_socket = {.name = "socket", .describe = describe, .owns = owns};
