/* File descriptors: what kind each one is, and whether we can capture it. The restore side of
 * every kind is in native/restore/fds.c. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "../common/sys.h"
#include "unix.h"

static void file_id(const struct stat *st, struct tg_file_id *id) {
  id->dev = st->st_dev;
  id->ino = st->st_ino;
  id->size = (uint64_t)st->st_size;
  id->mtime_ns = (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
  id->mode = st->st_mode;
  id->reserved = 0;
}

static unsigned long long parse_num(const char *p, int base) { return strtoull(p, NULL, base); }

static const char *field(const char *info, const char *key) {
  const char *p = strstr(info, key);
  return p ? p + strlen(key) : NULL;
}

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

TG_HIDDEN int tg_describe_fd(int fd, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err, size_t errlen) {
  char path[64], target[4096], info[8192];
  memset(rec, 0, sizeof *rec);
  rec->fd = (uint32_t)fd;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  long n = tg_sys4(SYS_readlink, path, target, sizeof target - 1, 0);
  if (n < 0) { snprintf(err, errlen, "fd %d: cannot read its link: %s", fd, strerror((int)-n)); return -1; }
  target[n] = 0;
  struct stat st;
  long r = tg_sys2(SYS_fstat, fd, &st);
  if (r < 0) { snprintf(err, errlen, "fd %d (%s): fstat: %s", fd, target, strerror((int)-r)); return -1; }
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (tg_read_file(path, info, sizeof info) < 0) { snprintf(err, errlen, "fd %d (%s): cannot read fdinfo", fd, target); return -1; }
  const char *p;
  if ((p = field(info, "pos:"))) rec->pos = parse_num(p, 10);
  if ((p = field(info, "flags:"))) rec->open_flags = (uint32_t)parse_num(p, 8);
  long fl = tg_sys2(SYS_fcntl, fd, F_GETFD);
  rec->fd_flags = fl > 0 ? (uint32_t)fl : 0;
  rec->open_flags &= ~(uint32_t)O_CLOEXEC;
  file_id(&st, &rec->id);
  size_t tl = strlen(target);
  const char *what = NULL;

  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISCHR(st.st_mode) || (S_ISFIFO(st.st_mode) && target[0] == '/')) {
    if (tl > 10 && strcmp(target + tl - 10, " (deleted)") == 0) {
      snprintf(err, errlen, "fd %d: file %s has been deleted; deleted open files are not supported yet", fd, target);
      return -1;
    }
    if (target[0] != '/') { snprintf(err, errlen, "fd %d (%s): not a path that can be reopened", fd, target); return -1; }
    if (S_ISREG(st.st_mode)) rec->kind = TG_FD_FILE;
    else if (S_ISDIR(st.st_mode)) rec->kind = TG_FD_DIR;
    else if (S_ISCHR(st.st_mode)) {
      rec->kind = TG_FD_CHR;
      rec->aux = st.st_rdev;
      /* /dev/pts/N and /dev/ttyN belong to a terminal that does not survive a restore */
      if (major(st.st_rdev) == 136 || major(st.st_rdev) == 4 || major(st.st_rdev) == 5) {
        snprintf(err, errlen, "fd %d: terminal %s is not supported (run the app with its stdio redirected; tardigrade run does that)", fd, target);
        return -1;
      }
    } else rec->kind = TG_FD_FIFO;
    if (tl > extra_cap) { snprintf(err, errlen, "fd %d: path too long", fd); return -1; }
    memcpy(extra, target, tl);
    rec->extra_len = (uint32_t)tl;
    return 0;
  }
  if (S_ISFIFO(st.st_mode) && strncmp(target, "pipe:[", 6) == 0) {
    rec->kind = (rec->open_flags & O_ACCMODE) == O_WRONLY ? TG_FD_PIPE_W : TG_FD_PIPE_R;
    rec->aux = st.st_ino;
    long sz = tg_sys2(SYS_fcntl, fd, F_GETPIPE_SZ);
    rec->id.size = sz > 0 ? (uint64_t)sz : 65536;
    return 0;
  }
  if (strcmp(target, "anon_inode:[eventfd]") == 0) {
    rec->kind = TG_FD_EVENTFD;
    if ((p = field(info, "eventfd-count:"))) rec->aux = parse_num(p, 16);
    if ((p = field(info, "eventfd-semaphore:")) && parse_num(p, 10)) rec->id.reserved = 1;
    return 0;
  }
  if (strcmp(target, "anon_inode:[eventpoll]") == 0) {
    rec->kind = TG_FD_EPOLL;
    size_t used = 0;
    for (const char *q = strstr(info, "tfd:"); q; q = strstr(q + 4, "tfd:")) {
      struct tg_epoll_entry e;
      const char *ev = strstr(q, "events:"), *da = strstr(q, "data:");
      if (!ev || !da) break;
      e.tfd = (uint32_t)strtoul(q + 4, NULL, 10);
      e.events = (uint32_t)strtoul(ev + 7, NULL, 16);
      e.data = strtoull(da + 5, NULL, 16);
      if (tg_is_hidden_fd((int)e.tfd)) continue;
      if (used + sizeof e > extra_cap) { snprintf(err, errlen, "fd %d: epoll set too large", fd); return -1; }
      memcpy(extra + used, &e, sizeof e);
      used += sizeof e;
    }
    rec->extra_len = (uint32_t)used;
    return 0;
  }
  char desc[256];
  if (S_ISSOCK(st.st_mode)) {
    int u = tg_unix_describe(fd, &st, rec, extra, extra_cap, err, errlen);
    if (u <= 0) return u;
    describe_socket((unsigned long long)st.st_ino, desc, sizeof desc);
    what = desc;
  } else if (strncmp(target, "anon_inode:", 11) == 0) {
    snprintf(desc, sizeof desc, "%s", target + 11);
    what = desc;
  } else {
    what = target;
  }
  snprintf(err, errlen,
           "fd %d (%s, %s) cannot be checkpointed: this kind of file descriptor is not supported yet; "
           "close it in the application or run it without it",
           fd, target, what);
  return -1;
}

/* Walks /proc/self/fd with getdents64 (no malloc: this also runs in the snapshot child). */
TG_HIDDEN int tg_precheck_fds(char *err, size_t errlen) {
  int dfd = (int)tg_sys3(SYS_open, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) { snprintf(err, errlen, "cannot list fds: %s", strerror(-dfd)); return -1; }
  char buf[4096];
  static char extra[1 << 16];
  static struct { int fd, read; uint64_t ino; } pipes[4096];
  int npipes = 0, rc = 0;
  tg_unix_begin();
  for (;;) {
    long n = tg_sys3(SYS_getdents64, dfd, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n && rc == 0;) {
      struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      int fd = atoi(d->name);
      if (fd == dfd || tg_is_hidden_fd(fd)) continue;
      struct tg_rec_fd rec;
      if (tg_describe_fd(fd, &rec, extra, sizeof extra, err, errlen) != 0) rc = -1;
      else if ((rec.kind == TG_FD_PIPE_R || rec.kind == TG_FD_PIPE_W) && npipes < 4096) {
        pipes[npipes].fd = fd;
        pipes[npipes].ino = rec.aux;
        pipes[npipes].read = rec.kind == TG_FD_PIPE_R;
        npipes++;
      }
    }
  }
  tg_sys1(SYS_close, dfd);
  if (rc == 0 && tg_unix_end(NULL, NULL, err, errlen) != 0) rc = -1; /* socket pairs: both ends ours */
  /* a pipe must have both ends in the process (pipes to other processes come with process trees) */
  for (int i = 0; rc == 0 && i < npipes; i++) {
    int other = 0;
    for (int j = 0; j < npipes; j++) if (pipes[j].ino == pipes[i].ino && pipes[j].read != pipes[i].read) other = 1;
    if (!other) {
      snprintf(err, errlen,
               "fd %d (pipe:[%llu], %s end): the other end of this pipe is outside the process; pipes to other "
               "processes are not supported yet",
               pipes[i].fd, (unsigned long long)pipes[i].ino, pipes[i].read ? "read" : "write");
      rc = -1;
    }
  }
  return rc;
}
