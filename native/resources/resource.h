/* A resource kind of the fd table is one file of native/resources/, its capture (in the agent) and
 * its restore (in tardigrade-restore) side by side, behind the ops table below. The agent's fd walk
 * (agent/fds.c) and the restorer's fd rebuild (restore/fds.c) iterate tg_fd_kinds and never switch
 * on a kind. A resource sees only common/ and this header, never the agent's or the restorer's
 * globals: what it needs comes in a probe (capture) or a context (restore).
 *
 * Capture runs in the agent with every thread parked (and the precheck while the app may run):
 * raw syscalls and static memory only, no malloc, no locks. */
#ifndef TG_RESOURCE_H
#define TG_RESOURCE_H
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "../common/image.h"

#define TG_RES_HIDDEN __attribute__((visibility("hidden")))

/* ---- capture ---- */

/* What the agent knows of one fd when asking each kind whether it is theirs. */
struct tg_fd_probe {
  int fd;
  const struct stat *st;
  const char *target;          /* readlink of /proc/self/fd/N */
  size_t target_len;
  const char *fdinfo;          /* /proc/self/fdinfo/N */
  int (*is_hidden)(int fd);    /* the agent's own fds, never part of an image */
};

/* An fd recorded by the walk, for the checks across fds a kind makes at the end (both ends of a
 * pipe or socket pair inside the process). */
struct tg_fd_seen {
  uint32_t fd, kind;
  uint64_t aux;                /* as in the FD record (a pipe's inode) */
  uint64_t ino;
};

/* Writes one record (payload a || b); 0, or an errno value (> 0) saying why it could not. */
typedef int (*tg_emit_fn)(void *ctx, uint32_t type, const void *a, size_t al, const void *b, size_t bl);

/* ---- restore ---- */

struct img_fd { struct tg_rec_fd r; char *extra; };
struct img_pipe { uint64_t ino; char *data; size_t len; };
/* senders: a DGRAM_SENDERS payload after its header (NULL: every datagram from an unnamed sender) */
struct img_sockdata { struct tg_rec_socket_data h; char *data; size_t len; const char *senders; size_t senders_len; };
/* INET_REPAIR: a TCP connection restored whole (data: send queue, then receive queue) */
struct img_inet_repair { struct tg_rec_inet_repair h; char *data; size_t len; };
/* A pipe of a process tree that the restorer made once, before the tree was cloned (its ends are
 * inherited by every process, which takes the ends its records name and closes the rest). */
struct tg_shared_pipe { uint64_t ino; int r, w; };

/* The image's fd records and the data records that go with them, and where each object is made:
 * every object is created at a temporary fd >= tmp_base (tmp[i] for record i), then moved into
 * place by the dispatcher, so that making one never lands on a number another still needs. */
struct tg_fd_restore {
  struct img_fd *fds; size_t nfds;
  struct img_pipe *pipes; size_t npipes;
  struct img_sockdata *socks; size_t nsocks;
  int *tmp;
  int tmp_base;
  const char *stdio_log;       /* --stdio-log: where the app's appended stdout/stderr go on this host */
  const struct tg_shared_pipe *shared; size_t nshared; /* pipes of the tree, made before it was cloned */
  const struct tg_lock *locks; size_t nlocks;          /* LOCKS record: taken back once every fd is in place */
  const struct img_inet_repair *repairs; size_t nrepairs; /* INET_REPAIR records (resources/inet.c) */
  const uint64_t *keep_conns; size_t nkeep_conns; /* --keep-connections: connections to outside peers held by the daemon, restored whole */
};

struct tg_fd_ops {
  const char *name;
  /* capture, on every fd until a kind claims it: 1 not this kind; 0 this kind (rec->kind, aux,
   * extra_len and extra filled); -1 refused, err names the fd, what it is and the way out. */
  int (*describe)(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                  size_t errlen);
  /* capture, optional: before the walk, and after it with every fd seen: checks across fds, then
   * (emit set: the checkpoint, not the precheck) the data records of the kind. 0, or -1 with err. */
  void (*begin)(void);
  int (*end)(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen);
  /* restore: is record kind k this kind's? */
  int (*owns)(uint32_t k);
  /* restore: make the object of record i (and any record sharing it) into rc->tmp. 0 or -1. */
  int (*open)(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen);
  /* restore, optional: once every fd is in place (an epoll set's watched fds exist then). */
  int (*settle)(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen);
};

/* Set by the agent for a capture that is part of a process tree's cut: an fd whose other end is in
 * another process of the app is then the tree's business (the daemon checks that it is inside the
 * app), not a refusal. */
TG_RES_HIDDEN extern int tg_res_tree;
/* Set by the agent for a checkpoint of an app run with `--external-unix closed`: a Unix stream
 * socket whose peer is outside the app is recorded to come back closed instead of refusing. */
TG_RES_HIDDEN extern int tg_res_ext_unix_closed;
/* Set by the restorer for `restore --allow-closed-tcp` (--allow-closed-tcp): a TCP connection with both ends in
 * the app that cannot be restored whole (no TCP_REPAIR state for an end: its process had no
 * CAP_NET_ADMIN at the checkpoint; or no CAP_NET_ADMIN in the restorer) comes back as a
 * connection its peer closed (end of file) instead of refusing the restore. */
TG_RES_HIDDEN extern int tg_res_tcp_closed;

/* resources/unixsender.c: a datagram socket bound to a sender's name (raw sun_path bytes, len of
 * them) and connected to the receiver `to`, from which a queued datagram is sent again so that it
 * is received from that name; -1 with err naming fd, the datagram's number nth and the sender. */
TG_RES_HIDDEN int tg_unix_sender(const struct sockaddr_un *to, socklen_t tl, const char *raw, uint32_t len, uint32_t fd, uint32_t nth, char *err, size_t errlen);

/* resources/table.c: every kind, in the order describe is asked; NULL-terminated. */
TG_RES_HIDDEN extern const struct tg_fd_ops *const tg_fd_kinds[];

/* Shared helpers (resources/util.c). */
TG_RES_HIDDEN void tg_res_file_id(const struct stat *st, struct tg_file_id *id);
/* the value after `key` in an fdinfo text, or NULL */
TG_RES_HIDDEN const char *tg_res_field(const char *info, const char *key);
/* fd moved to a close-on-exec fd >= tmp_base (fd is closed); -1 with err */
TG_RES_HIDDEN int tg_res_high(int fd, int tmp_base, char *err, size_t errlen);
/* the status flags fcntl(F_SETFL) takes back from a record's open flags */
TG_RES_HIDDEN int tg_res_status_flags(uint32_t open_flags);
/* One sock_diag request: body (the family's request: struct unix_diag_req, inet_diag_req_v2...)
 * sent as a SOCK_DIAG_BY_FAMILY message (dump: NLM_F_DUMP, answered until NLMSG_DONE; else one
 * answer), each(message, ctx) called on every answer message until it returns non-zero. Returns
 * each's non-zero value, 0 at the end of the answer, or -errno (the socket, sending, receiving,
 * or the kernel's NLMSG_ERROR). Raw syscalls and a static buffer: capture-safe, not reentrant. */
struct nlmsghdr;
TG_RES_HIDDEN int tg_res_sock_diag(const void *body, size_t body_len, int dump, int (*each)(const struct nlmsghdr *h, void *ctx), void *ctx);
/* A socket's buffer size given back: half of what SO_*BUF reported (the kernel doubles it), with
 * the FORCE option first (over the limits, root) */
TG_RES_HIDDEN void tg_res_sock_buf(int fd, int force, int plain, uint32_t v);
/* A Unix socket s bound again on its name (at restore): a socket file a dead process left is
 * replaced, and a name someone still uses (probed with a socket of `type`) or a file that is not a
 * socket refuses; then the file's mode, buffer sizes and SO_PASSCRED (flags bit 0) come back.
 * `what`: "listen on", "bind" (said in errors), `busy`: what the live user does ("listens",
 * "receives"). 0, or -1 with err (s left to the caller). */
struct sockaddr_un;
TG_RES_HIDDEN int tg_res_unix_bind_again(int s, int type, const struct sockaddr_un *sa, unsigned sl, uint32_t mode, uint32_t sndbuf,
                                         uint32_t rcvbuf, uint32_t flags, unsigned fd, const char *what, const char *busy, const char *shown,
                                         char *err, size_t errlen);
/* resources/pipe.c: the restorer's pipes of a process tree (struct tg_shared_pipe) */
TG_RES_HIDDEN int tg_pipe_make_shared(struct tg_shared_pipe *out, uint64_t ino, uint64_t size, const char *data, size_t len,
                                      int tmp_base, char *err, size_t errlen);
/* resources/unix.c: after a tree-mode capture, the sockets whose peer is in another process, as
 * JSON [[fd,ino,peer],...] (its length, 0 if it did not fit); at restore, a Unix socket record's
 * inode and its peer's (0, or -1 for another kind) */
/* resources/unix.c: one Unix socket as sock_diag describes it (looked up by inode): type, state,
 * peer's inode, shutdown bits, backlog (listening) or bytes to read (connected), its name printable
 * (a path, @abstract, "" unnamed) and as bound (raw, raw_len). 0, or -errno (ENOENT: no such socket). */
struct tg_unix_diag {
  uint32_t ino, type, state, peer, shutdown, backlog, rqueue;
  char name[112];
  char raw[108];
  uint32_t raw_len;
};
TG_RES_HIDDEN int tg_unix_diag(uint32_t ino, struct tg_unix_diag *out);
TG_RES_HIDDEN size_t tg_unix_unmatched(char *out, size_t cap);
TG_RES_HIDDEN int tg_unix_ids(const struct img_fd *f, uint64_t *ino, uint64_t *peer);
/* resources/inet.c: a process tree's TCP connections whose two ends are in two of its processes
 * (all: every record of the tree, repairs: every process's INET_REPAIR records; pid_of: each
 * record's process), made whole at all->tmp; the inodes made are listed in made (room for
 * all->nfds). 0, or -1 with err. */
TG_RES_HIDDEN int tg_inet_tree_pairs(struct tg_fd_restore *all, const int *pid_of, uint64_t *made, size_t *nmade, char *err, size_t errlen);
/* resources/locks.c: the locks fdinfo lists for an fd (noted for the LOCKS record); 0, or -1 with
 * err (a lease, or more locks than a checkpoint takes) */
TG_RES_HIDDEN void tg_locks_begin(void);
TG_RES_HIDDEN int tg_locks_note(int fd, const char *fdinfo, const char *path, char *err, size_t errlen);
TG_RES_HIDDEN int tg_locks_emit(tg_emit_fn emit, void *ctx, char *err, size_t errlen);
/* resources/locks.c: takes back the locks recorded for fd (in place); 0, or -1 with err */
TG_RES_HIDDEN int tg_locks_apply(const struct tg_fd_restore *rc, uint32_t fd, const char *path, char *err, size_t errlen);
/* resources/file.c: is fd (opened from path) the file the record names? 0, or -1 with err */
TG_RES_HIDDEN int tg_check_file(const char *path, const struct tg_file_id *id, int fd, char *err, size_t errlen);
/* resources/file.c: set by the restorer's --files-rolled-back (issue 14): the daemon has just put the
 * app's files back as they were at the checkpoint, recreating those deleted since (new inodes), so
 * a regular file at its path is the checkpoint's even when its inode differs */
TG_RES_HIDDEN extern int tg_files_rolled_back;
/* resources/pty.c, restore: the app's ptys, made again by the restorer's init before the tree is
 * cloned (every process inherits the masters, closed by the blob after the go). tg_pty_note: the
 * ptys one process's records and its TTY record (or NULL) name; tg_pty_premake: makes them all at
 * their indexes (opening /dev/ptmx in the restorer's fresh devpts) with their state; 0, or -1 with
 * err. tg_pty_ctty: in a new process, once in its session and group: its controlling terminal (a
 * session leader) and the terminal's foreground group (a process of that group); 0, or -1 with err. */
struct tg_rec_tty;
TG_RES_HIDDEN int tg_pty_note(const struct img_fd *fds, size_t nfds, const struct tg_rec_tty *tty, char *err, size_t errlen);
TG_RES_HIDDEN int tg_pty_premake(int tmp_base, char *err, size_t errlen);
TG_RES_HIDDEN void tg_pty_close_premade(void);
TG_RES_HIDDEN int tg_pty_ctty(const struct tg_rec_tty *t, int pid, int pgid, char *err, size_t errlen);
#endif
