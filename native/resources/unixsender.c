/* Restore of a named Unix datagram socket's queue (resources/unixdgram.c): a socket that carries a
 * sender's name, so that the datagram sent from it is received from that name (recvfrom's address:
 * the name the sending socket was bound to, byte for byte), whoever holds the name by then.
 *
 * - A path (absolute or relative): the socket is connected to the receiver first, then bound to
 *   the same path string inside a private empty directory made the root for the moment of the
 *   bind (chroot, then back to the real root through an fd kept open): the kernel records the
 *   string it was given, and nothing is created or replaced in the real file system, so a path a
 *   client outside still listens on (or one of the app's own sockets, restored before or after)
 *   stays as it is. Needs CAP_SYS_CHROOT.
 * - An abstract name: bound in the network namespace of the app when it is free (the socket is
 *   closed once its datagrams are sent, which frees the name again). When another socket holds
 *   it (a client outside still running), the socket is made in a fresh network namespace, where
 *   the name is free, and connected to the receiver by its path (a path reaches a socket across
 *   network namespaces; an abstract name does not: a receiver with an abstract name then refuses
 *   the restore, naming both). Needs CAP_SYS_ADMIN for the namespace.
 *
 * The restorer's process is single-threaded here (stage 1, or the tree's init before cloning): the
 * root, working directory and network namespace it changes for a moment are its own. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* "/path", "rel/path" or "@abstract" */
static void shown(const char *raw, uint32_t len, char *out, size_t cap) {
  if (raw[0]) snprintf(out, cap, "%.*s", (int)strnlen(raw, len), raw);
  else snprintf(out, cap, "@%.*s", (int)(len - 1), raw + 1);
}

/* s (connected to the receiver) bound to path `name` inside a private root. 0, or an errno. */
static int bind_in_private_root(int s, const struct sockaddr_un *name, socklen_t nl, const char **step) {
  char dir[] = "/tmp/tardigrade-sender-XXXXXX";
  *step = "making a private directory in /tmp";
  if (!mkdtemp(dir)) return errno;
  int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC), cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  int e = 0, inside = 0;
  char path[sizeof name->sun_path + 1];
  size_t pl;
  *step = "opening the root";
  if (root < 0 || cwd < 0) { e = errno; goto out; }
  *step = "chroot into the private directory";
  if (chroot(dir) != 0) { e = errno; goto out; }
  inside = 1;
  if (chdir("/") != 0) { e = errno; goto back; }
  /* the path's directories, made inside (".." cannot climb above this root) */
  pl = strnlen(name->sun_path, sizeof name->sun_path);
  memcpy(path, name->sun_path, pl);
  path[pl] = 0;
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) { e = errno; *step = "making the path's directories"; }
    *p = '/';
    if (e) goto back;
  }
  *step = "bind";
  if (bind(s, (const struct sockaddr *)name, nl) != 0) e = errno;
  unlink(path); /* the socket keeps its name without the file */
  for (char *p = path + pl; p > path; p--)
    if (*p == '/') { *p = 0; rmdir(path); }
back:
  /* back to the real root and working directory: failing that, the restorer cannot go on */
  if (inside && (fchdir(root) != 0 || chroot(".") != 0 || fchdir(cwd) != 0)) {
    fprintf(stderr, "tardigrade-restore: cannot leave the private root %s: %s\n", dir, strerror(errno));
    _exit(111);
  }
out:
  if (root >= 0) close(root);
  if (cwd >= 0) close(cwd);
  rmdir(dir);
  return e;
}

TG_RES_HIDDEN int tg_unix_sender(const struct sockaddr_un *to, socklen_t tl, const char *raw, uint32_t len, uint32_t fd, uint32_t nth,
                                 char *err, size_t errlen) {
  struct sockaddr_un name;
  memset(&name, 0, sizeof name);
  name.sun_family = AF_UNIX;
  memcpy(name.sun_path, raw, len);
  socklen_t nl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  char who[112], rcv[112];
  shown(raw, len, who, sizeof who);
  shown(to->sun_path, (uint32_t)(tl - offsetof(struct sockaddr_un, sun_path)), rcv, sizeof rcv);
  const char *step = "socket";
  int e = 0;
  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) { e = errno; goto fail; }
  if (raw[0]) {
    step = "connect";
    if (connect(s, (const struct sockaddr *)to, tl) != 0) { e = errno; goto fail; }
    e = bind_in_private_root(s, &name, nl, &step);
    if (e) goto fail;
    return s;
  }
  step = "bind";
  if (bind(s, (const struct sockaddr *)&name, nl) == 0) {
    step = "connect";
    if (connect(s, (const struct sockaddr *)to, tl) != 0) { e = errno; goto fail; }
    return s;
  }
  if (errno != EADDRINUSE) { e = errno; goto fail; }
  close(s);
  s = -1;
  if (!to->sun_path[0]) {
    snprintf(err, errlen,
             "fd %u (Unix datagram socket bound to %s): its queued datagram %u came from %s, a name another socket holds now; an abstract name in use cannot be lent to the datagram when the receiver's name is abstract too: end the process that holds %s and restore again",
             fd, rcv, nth, who, who);
    return -1;
  }
  /* a fresh network namespace, for this socket only */
  step = "opening /proc/self/ns/net";
  int ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (ns < 0) { e = errno; goto fail; }
  step = "unshare(CLONE_NEWNET)";
  if (unshare(CLONE_NEWNET) != 0) { e = errno; close(ns); goto fail; }
  s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  e = s < 0 ? errno : 0;
  if (setns(ns, CLONE_NEWNET) != 0) {
    fprintf(stderr, "tardigrade-restore: cannot go back to the app's network namespace: %s\n", strerror(errno));
    _exit(111);
  }
  close(ns);
  step = "socket in a fresh network namespace";
  if (s < 0) goto fail;
  step = "bind in a fresh network namespace";
  if (bind(s, (const struct sockaddr *)&name, nl) != 0) { e = errno; goto fail; }
  step = "connect from a fresh network namespace";
  if (connect(s, (const struct sockaddr *)to, tl) != 0) { e = errno; goto fail; }
  return s;
fail:
  if (s >= 0) close(s);
  snprintf(err, errlen, "fd %u (Unix datagram socket bound to %s): giving its queued datagram %u the name of its sender %s: %s: %s%s", fd, rcv, nth, who, step,
           strerror(e), e == EPERM ? " (a restore gives datagrams their senders' names as root: CAP_SYS_CHROOT for a path, CAP_SYS_ADMIN for an abstract name in use)" : "");
  return -1;
}
