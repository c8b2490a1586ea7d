/* Pseudo-terminals (FD kinds 16 master, 17 slave; TTY record 21). Every app has its own devpts
 * instance (native/launcher/launcher.c mounts one on /dev/pts in a private mount namespace), so
 * its ptys are numbered from 0 by itself and a restore, in a fresh instance of its own, makes them
 * again at the same indexes: /dev/ptmx gives the lowest free index, so the restorer's init opens
 * it until every index the image names exists (the ones in between are closed once all are made),
 * before the tree is cloned; every process inherits the masters.
 *
 * Captured: the index, the slave's termios (TCGETS2 on either end: on a master it reads its
 * slave's) and window size, locked state and packet mode (from a master), and how many bytes were
 * queued. The bytes themselves are not kept: reading them would take them from the running app
 * (a tty has no peek); the restore says how many were dropped. A process's controlling terminal
 * and the terminal's foreground process group are the TTY record, given back by the restorer as
 * each process is made (tg_pty_ctty). A terminal from outside the app (not in its devpts: the one
 * a command was started from, a console, a virtual terminal) still refuses, by name. */
#include "resource.h"
#include "../common/readfile.h"
#include "../common/sys.h"

#include <asm/termbits.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define PTMX_MAJOR 5
#define PTMX_MINOR 2
#define SLAVE_MAJOR 136 /* UNIX98_PTY_SLAVE_MAJOR: 136..143 */

/* struct winsize, as the ioctls take it */
struct kwinsize { uint16_t row, col, xpixel, ypixel; };

static int is_master(const struct stat *st) {
  return S_ISCHR(st->st_mode) && major(st->st_rdev) == PTMX_MAJOR && minor(st->st_rdev) == PTMX_MINOR;
}
static int slave_index(dev_t rdev) {
  unsigned maj = major(rdev);
  return maj >= SLAVE_MAJOR && maj < SLAVE_MAJOR + 8 ? (int)((maj - SLAVE_MAJOR) * 256 + minor(rdev)) : -1;
}

/* the terminal state both ends can read: termios and window size */
static int read_term(int fd, struct tg_pty *t) {
  struct termios2 k;
  struct kwinsize w;
  long r = tg_sys3(SYS_ioctl, fd, TCGETS2, &k);
  if (r == 0) r = tg_sys3(SYS_ioctl, fd, TIOCGWINSZ, &w);
  if (r != 0) return (int)-r;
  _Static_assert(sizeof k.c_cc == sizeof t->cc, "termios2 c_cc");
  t->iflag = k.c_iflag, t->oflag = k.c_oflag, t->cflag = k.c_cflag, t->lflag = k.c_lflag, t->ispeed = k.c_ispeed, t->ospeed = k.c_ospeed;
  t->line = k.c_line;
  memcpy(t->cc, k.c_cc, sizeof t->cc);
  t->rows = w.row, t->cols = w.col, t->xpixel = w.xpixel, t->ypixel = w.ypixel;
  return 0;
}

/* the device of the app's devpts (its /dev/pts), 0 if it cannot be read */
static dev_t own_devpts(void) {
  struct stat st;
  return tg_sys4(SYS_newfstatat, AT_FDCWD, "/dev/pts", &st, 0) == 0 ? st.st_dev : 0;
}

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  int master = is_master(p->st), idx = master ? -1 : slave_index(p->st->st_rdev);
  if (!master && idx < 0) return 1;
  if (!S_ISCHR(p->st->st_mode)) return 1;
  struct tg_pty t;
  memset(&t, 0, sizeof t);
  if (extra_cap < sizeof t) { snprintf(err, errlen, "fd %d (%s): no room for its record", p->fd, p->target); return -1; }
  long r;
  if (master) {
    /* opened through the app's /dev/ptmx (or /dev/pts/ptmx): a pty of its own devpts */
    if (strcmp(p->target, "/dev/ptmx") != 0 && strcmp(p->target, "/dev/pts/ptmx") != 0) {
      snprintf(err, errlen, "fd %d: terminal %s is not supported (a pty master not opened through the app's /dev/ptmx)", p->fd, p->target);
      return -1;
    }
    unsigned n = 0;
    int lck = 0, pkt = 0, q = 0;
    if ((r = tg_sys3(SYS_ioctl, p->fd, TIOCGPTN, &n)) != 0 || (r = tg_sys3(SYS_ioctl, p->fd, TIOCGPTLCK, &lck)) != 0 ||
        (r = tg_sys3(SYS_ioctl, p->fd, TIOCGPKT, &pkt)) != 0 || (r = tg_sys3(SYS_ioctl, p->fd, FIONREAD, &q)) != 0 ||
        (r = -read_term(p->fd, &t)) != 0) {
      snprintf(err, errlen, "fd %d (pty master %s) cannot be checkpointed: ioctl: %s", p->fd, p->target, strerror((int)-r));
      return -1;
    }
    t.index = n;
    t.flags = TG_PTY_MASTER_STATE | (lck ? TG_PTY_LOCKED : 0) | (pkt ? TG_PTY_PACKET : 0);
    t.out_queued = (uint32_t)q;
    rec->kind = TG_FD_PTY_MASTER;
  } else {
    dev_t own = own_devpts();
    if (!own || p->st->st_dev != own) {
      snprintf(err, errlen, "fd %d: terminal %s is not supported: it is not one of the app's own ptys (a terminal from outside the app, such as the one a command was started from; run the app with its stdio redirected: tardigrade run does that)",
               p->fd, p->target);
      return -1;
    }
    int q = 0;
    r = tg_sys3(SYS_ioctl, p->fd, FIONREAD, &q);
    if (r == -EIO) {
      /* hung up (its master was closed): restored open on a pty whose master no record holds,
       * closed when the app starts running, which hangs it up again */
      t.flags = TG_PTY_HUNGUP;
      r = 0;
    } else if (r == 0) {
      r = -read_term(p->fd, &t);
    }
    if (r != 0) {
      snprintf(err, errlen, "fd %d (pty %s) cannot be checkpointed: ioctl: %s", p->fd, p->target, strerror((int)-r));
      return -1;
    }
    t.index = (uint32_t)idx;
    t.in_queued = (uint32_t)q;
    rec->kind = TG_FD_PTY_SLAVE;
  }
  rec->aux = t.index;
  memcpy(extra, &t, sizeof t);
  rec->extra_len = sizeof t;
  return 0;
}

/* The process's controlling terminal (/proc/self/stat's tty_nr): none, one of the app's ptys
 * (0 and *out filled), or a refusal. */
static int ctty(struct tg_rec_tty *out, int *has, char *err, size_t errlen) {
  static char st[1024];
  *has = 0;
  long n = tg_read_file("/proc/self/stat", st, sizeof st);
  if (n <= 0) { snprintf(err, errlen, "/proc/self/stat: %s", n < 0 ? strerror((int)-n) : "empty"); return -1; }
  const char *p = strrchr(st, ')');
  /* after the name: state ppid pgrp session tty_nr */
  for (int f = 0; p && f < 5; f++) p = strchr(p + 1, ' ');
  if (!p) { snprintf(err, errlen, "/proc/self/stat: no tty_nr"); return -1; }
  unsigned long nr = strtoul(p + 1, NULL, 10);
  if (nr == 0) return 0;
  unsigned maj = (unsigned)((nr >> 8) & 0xfff), mnr = (unsigned)((nr & 0xff) | ((nr >> 12) & 0xfff00));
  int idx = slave_index(makedev(maj, mnr));
  char path[64];
  snprintf(path, sizeof path, "/dev/pts/%d", idx);
  long fd = idx < 0 ? -ENODEV : tg_sys4(SYS_openat, AT_FDCWD, path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, 0);
  int sid = 0, pgrp = 0;
  /* TIOCGSID answers only on the caller's controlling terminal: the app's /dev/pts/N is it */
  long r = fd < 0 ? fd : tg_sys3(SYS_ioctl, fd, TIOCGSID, &sid);
  if (r == 0 && tg_sys3(SYS_ioctl, fd, TIOCGPGRP, &pgrp) != 0) pgrp = 0;
  if (fd >= 0) tg_sys1(SYS_close, fd);
  if (r != 0) {
    snprintf(err, errlen, "its controlling terminal (device %u:%u) is not one of the app's own ptys (a terminal from outside the app) and is not supported", maj, mnr);
    return -1;
  }
  *out = (struct tg_rec_tty){(uint32_t)idx, sid, pgrp, 0};
  *has = 1;
  return 0;
}

static int end(const struct tg_fd_seen *seen, int nseen, tg_emit_fn emit, void *ctx, char *err, size_t errlen) {
  (void)seen, (void)nseen;
  struct tg_rec_tty t;
  int has;
  if (ctty(&t, &has, err, errlen) != 0) return -1;
  if (!has || !emit) return 0;
  int we = emit(ctx, TG_REC_TTY, &t, sizeof t, NULL, 0);
  if (we != 0) { snprintf(err, errlen, "writing the image: %s", strerror(we)); return -1; }
  return 0;
}

/* ---- restore ---- */

#define MAX_PTYS 256
struct made { uint32_t index; int known, master; struct tg_pty st; };
static struct made made[MAX_PTYS];
static size_t nmade;

static struct made *find(uint32_t index) {
  for (size_t i = 0; i < nmade; i++) if (made[i].index == index) return &made[i];
  return NULL;
}

static int note(uint32_t index, const struct tg_pty *st, char *err, size_t errlen) {
  struct made *m = find(index);
  if (!m) {
    if (nmade == MAX_PTYS) { snprintf(err, errlen, "more than %d ptys: not supported", MAX_PTYS); return -1; }
    m = &made[nmade++];
    memset(m, 0, sizeof *m);
    m->index = index;
    m->master = -1;
  }
  /* a master's record knows the most (lock, packet mode); a slave's state is taken otherwise */
  if (st && (st->flags & TG_PTY_HUNGUP)) return 0; /* knows nothing of the terminal */
  if (st && (!m->known || ((st->flags & TG_PTY_MASTER_STATE) && !(m->st.flags & TG_PTY_MASTER_STATE)))) {
    uint32_t in = m->st.in_queued > st->in_queued ? m->st.in_queued : st->in_queued, out = m->st.out_queued > st->out_queued ? m->st.out_queued : st->out_queued;
    m->st = *st;
    m->st.in_queued = in, m->st.out_queued = out;
    m->known = 1;
  } else if (st) {
    if (st->in_queued > m->st.in_queued) m->st.in_queued = st->in_queued;
    if (st->out_queued > m->st.out_queued) m->st.out_queued = st->out_queued;
  }
  return 0;
}

int tg_pty_note(const struct img_fd *fds, size_t nfds, const struct tg_rec_tty *tty, char *err, size_t errlen) {
  for (size_t i = 0; i < nfds; i++) {
    const struct tg_rec_fd *r = &fds[i].r;
    if (r->kind != TG_FD_PTY_MASTER && r->kind != TG_FD_PTY_SLAVE) continue;
    struct tg_pty t;
    if (r->extra_len != sizeof t) {
      snprintf(err, errlen, "fd %u (pty): its record holds %u bytes, not %zu", r->fd, r->extra_len, sizeof t);
      return -1;
    }
    memcpy(&t, fds[i].extra, sizeof t);
    if (note(t.index, &t, err, errlen) != 0) return -1;
  }
  return tty ? note(tty->index, NULL, err, errlen) : 0;
}

static int set_state(const struct made *m, char *err, size_t errlen) {
  const struct tg_pty *t = &m->st;
  int fd = m->master;
  if (m->known) {
    struct termios2 k;
    memset(&k, 0, sizeof k);
    k.c_iflag = t->iflag, k.c_oflag = t->oflag, k.c_cflag = t->cflag, k.c_lflag = t->lflag, k.c_ispeed = t->ispeed, k.c_ospeed = t->ospeed;
    k.c_line = t->line;
    memcpy(k.c_cc, t->cc, sizeof k.c_cc);
    struct kwinsize w = {t->rows, t->cols, t->xpixel, t->ypixel};
    int pkt = (t->flags & TG_PTY_PACKET) != 0;
    if (ioctl(fd, TCSETS2, &k) != 0) { snprintf(err, errlen, "pty %u: setting its termios (TCSETS2): %s", m->index, strerror(errno)); return -1; }
    if (ioctl(fd, TIOCSWINSZ, &w) != 0) { snprintf(err, errlen, "pty %u: setting its window size: %s", m->index, strerror(errno)); return -1; }
    if (pkt && ioctl(fd, TIOCPKT, &pkt) != 0) { snprintf(err, errlen, "pty %u: packet mode (TIOCPKT): %s", m->index, strerror(errno)); return -1; }
  }
  int lock = m->known && (t->flags & TG_PTY_LOCKED);
  if (ioctl(fd, TIOCSPTLCK, &lock) != 0) { snprintf(err, errlen, "pty %u: TIOCSPTLCK: %s", m->index, strerror(errno)); return -1; }
  if (t->in_queued || t->out_queued)
    fprintf(stderr, "tardigrade-restore: pty %u (/dev/pts/%u): %u byte(s) of input and %u of output queued in it at the checkpoint were dropped (a terminal's queues are not kept)\n",
            m->index, m->index, t->in_queued, t->out_queued);
  return 0;
}

int tg_pty_premake(int tmp_base, char *err, size_t errlen) {
  if (!nmade) return 0;
  uint32_t top = 0;
  for (size_t i = 0; i < nmade; i++) if (made[i].index > top) top = made[i].index;
  if (top >= 4096) { snprintf(err, errlen, "pty index %u: not supported (over 4095)", top); return -1; }
  int spare[4096];
  size_t nspare = 0, got = 0;
  int rc = -1;
  while (got < nmade) {
    int fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) { snprintf(err, errlen, "cannot make the app's ptys again: /dev/ptmx: %s", strerror(errno)); goto out; }
    unsigned n = 0;
    if (ioctl(fd, TIOCGPTN, &n) != 0) { snprintf(err, errlen, "/dev/ptmx: TIOCGPTN: %s", strerror(errno)); close(fd); goto out; }
    struct made *m = find(n);
    if (!m && n > top) {
      close(fd);
      snprintf(err, errlen, "cannot make pty %u again: /dev/ptmx gave index %u (is the restorer's devpts not the app's own, fresh one?)", top, n);
      goto out;
    }
    if (!m) { spare[nspare++] = fd; continue; }
    if ((m->master = tg_res_high(fd, tmp_base, err, errlen)) < 0) goto out;
    if (set_state(m, err, errlen) != 0) goto out;
    got++;
  }
  rc = 0;
out:
  for (size_t i = 0; i < nspare; i++) close(spare[i]);
  return rc;
}

void tg_pty_close_premade(void) {
  for (size_t i = 0; i < nmade; i++) if (made[i].master >= 0) close(made[i].master);
}

int tg_pty_ctty(const struct tg_rec_tty *t, int pid, int pgid, char *err, size_t errlen) {
  char path[64];
  snprintf(path, sizeof path, "/dev/pts/%u", t->index);
  int leader = t->sid == pid, fg = t->fg_pgrp == pgid;
  if (!leader && !fg) return 0; /* inherited from its session's leader, made before it */
  int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) { snprintf(err, errlen, "its controlling terminal %s: %s", path, strerror(errno)); return -1; }
  int rc = 0;
  if (leader && ioctl(fd, TIOCSCTTY, 0) != 0) {
    snprintf(err, errlen, "making %s its controlling terminal (TIOCSCTTY): %s", path, strerror(errno));
    rc = -1;
  }
  if (rc == 0 && fg) {
    /* from a background group, tcsetpgrp stops the caller with SIGTTOU unless it blocks it */
    sigset_t ttou, old;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, &old);
    pid_t g = pgid;
    if (ioctl(fd, TIOCSPGRP, &g) != 0) {
      snprintf(err, errlen, "making process group %d the foreground of %s (TIOCSPGRP): %s", pgid, path, strerror(errno));
      rc = -1;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
  }
  close(fd);
  return rc;
}

static int owns(uint32_t k) { return k == TG_FD_PTY_MASTER || k == TG_FD_PTY_SLAVE; }

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct tg_rec_fd *r = &rc->fds[i].r;
  struct made *m = find((uint32_t)r->aux);
  if (!m || m->master < 0) { snprintf(err, errlen, "fd %u: pty %llu was not made", r->fd, (unsigned long long)r->aux); return -1; }
  int fd;
  if (r->kind == TG_FD_PTY_MASTER) {
    fd = fcntl(m->master, F_DUPFD_CLOEXEC, rc->tmp_base);
    if (fd < 0) { snprintf(err, errlen, "fd %u (pty %u master): %s", r->fd, m->index, strerror(errno)); return -1; }
    if (fcntl(fd, F_SETFL, tg_res_status_flags(r->open_flags)) != 0) {
      snprintf(err, errlen, "fd %u (pty %u master): fcntl(F_SETFL): %s", r->fd, m->index, strerror(errno));
      close(fd);
      return -1;
    }
    rc->tmp[i] = fd;
    return 0;
  }
  char path[64];
  snprintf(path, sizeof path, "/dev/pts/%u", m->index);
  /* a locked pty's slave cannot be opened: unlocked for the open (the app opened it before it was locked) */
  int lock = 0, locked = m->known && (m->st.flags & TG_PTY_LOCKED);
  if (locked && ioctl(m->master, TIOCSPTLCK, &lock) != 0) { snprintf(err, errlen, "fd %u: unlocking %s: %s", r->fd, path, strerror(errno)); return -1; }
  fd = open(path, (int)(r->open_flags & (O_ACCMODE | O_NONBLOCK | O_APPEND | O_ASYNC)) | O_NOCTTY | O_CLOEXEC);
  int e = errno;
  lock = 1;
  if (locked) ioctl(m->master, TIOCSPTLCK, &lock);
  if (fd < 0) { snprintf(err, errlen, "fd %u: cannot open %s again: %s", r->fd, path, strerror(e)); return -1; }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_pty = {.name = "pty", .describe = describe, .end = end, .owns = owns, .open = open_one};
