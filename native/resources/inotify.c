/* inotify (FD kind 11): every watch, by the path of the file or directory it watches, with its wd
 * and mask. Capture reads the watches from fdinfo and finds each watched inode's path through its
 * file handle (open_by_handle_at on a mount of the same device: needs CAP_DAC_READ_SEARCH, so a
 * root app); restore makes a new instance and adds the watches again in the order of their wds,
 * using up the wd numbers between them on scratch files, so that every wd the app holds names the
 * same path as before. Events queued at the checkpoint are not kept. */
#include "resource.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "../common/readfile.h"

/* The FD record's extra: entries back to back, each a struct tg_inotify_watch and its path. */
struct tg_inotify_watch {
  int32_t wd;
  uint32_t mask;
  uint32_t path_len;
  uint32_t reserved;
};
_Static_assert(sizeof(struct tg_inotify_watch) == 16, "inotify watch");

#define INOTIFY_INFO_CAP (1 << 16)

/* A directory on the mount of device `dev` (major << 20 | minor, as fdinfo prints it), open; -1 */
static int mount_of(unsigned long dev) {
  static char mi[1 << 16];
  long n = tg_read_file("/proc/self/mountinfo", mi, sizeof mi);
  if (n <= 0) return -1;
  char want[32];
  snprintf(want, sizeof want, "%lu:%lu", dev >> 20, dev & 0xfffff);
  for (char *l = mi; l && *l;) {
    char *nl = strchr(l, '\n');
    if (nl) *nl = 0;
    /* id parent major:minor root mountpoint ... */
    char *f[5] = {0};
    char *s = l;
    for (int i = 0; i < 5 && s; i++) {
      f[i] = s;
      s = strchr(s, ' ');
      if (s) *s++ = 0;
    }
    if (f[4] && strcmp(f[2], want) == 0) {
      int fd = open(f[4], O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* not O_PATH: open_by_handle_at refuses those */
      if (fd >= 0) return fd;
    }
    l = nl ? nl + 1 : NULL;
  }
  return -1;
}

static int describe(const struct tg_fd_probe *p, struct tg_rec_fd *rec, char *extra, size_t extra_cap, char *err,
                    size_t errlen) {
  if (strcmp(p->target, "anon_inode:inotify") != 0) return 1;
  static char info[INOTIFY_INFO_CAP];
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", p->fd);
  long n = tg_read_file(path, info, sizeof info);
  if (n < 0 || n >= (long)sizeof info - 1) {
    snprintf(err, errlen, "fd %d (inotify): cannot read its watches (%s)", p->fd, n < 0 ? strerror((int)-n) : "more than a checkpoint takes");
    return -1;
  }
  rec->kind = TG_FD_INOTIFY;
  size_t o = 0;
  uint32_t count = 0;
  for (const char *l = strstr(info, "inotify wd:"); l; l = strstr(l + 1, "inotify wd:")) {
    int wd = 0, hbytes = 0, htype = 0;
    unsigned long ino = 0, sdev = 0;
    unsigned mask = 0, ignored = 0;
    char hex[2 * MAX_HANDLE_SZ + 1];
    if (sscanf(l, "inotify wd:%x ino:%lx sdev:%lx mask:%x ignored_mask:%x fhandle-bytes:%x fhandle-type:%x f_handle:%256s", &wd, &ino,
               &sdev, &mask, &ignored, &hbytes, &htype, hex) != 8 ||
        hbytes <= 0 || hbytes > MAX_HANDLE_SZ || strlen(hex) != (size_t)hbytes * 2) {
      snprintf(err, errlen, "fd %d (inotify): cannot read a watch from fdinfo (the kernel prints no file handle for it)", p->fd);
      return -1;
    }
    static union { struct file_handle fh; char b[sizeof(struct file_handle) + MAX_HANDLE_SZ]; } h;
    h.fh.handle_bytes = (unsigned)hbytes;
    h.fh.handle_type = htype;
    for (int i = 0; i < hbytes; i++) {
      unsigned v;
      if (sscanf(hex + 2 * i, "%2x", &v) != 1) v = 0;
      h.fh.f_handle[i] = (unsigned char)v;
    }
    int mfd = mount_of(sdev);
    int wfd = mfd >= 0 ? open_by_handle_at(mfd, &h.fh, O_PATH | O_CLOEXEC) : -1;
    int e = errno;
    if (mfd >= 0) close(mfd);
    char target[4096];
    long tl = -1;
    if (wfd >= 0) {
      snprintf(path, sizeof path, "/proc/self/fd/%d", wfd);
      tl = readlink(path, target, sizeof target - 1);
      close(wfd);
    }
    if (tl <= 0 || target[0] != '/') {
      snprintf(err, errlen, "fd %d (inotify): watch %d (inode %lu) cannot be named by a path (%s)", p->fd, wd, ino,
               mfd < 0 ? "no mount of its device" : wfd < 0 ? strerror(e) : "unreadable");
      return -1;
    }
    target[tl] = 0;
    if (tl > 10 && strcmp(target + tl - 10, " (deleted)") == 0) {
      snprintf(err, errlen, "fd %d (inotify): watch %d is on a deleted file (%s)", p->fd, wd, target);
      return -1;
    }
    struct tg_inotify_watch w = {wd, mask, (uint32_t)tl, 0};
    if (o + sizeof w + (size_t)tl > extra_cap) {
      snprintf(err, errlen, "fd %d (inotify): more watches than a checkpoint takes", p->fd);
      return -1;
    }
    memcpy(extra + o, &w, sizeof w);
    memcpy(extra + o + sizeof w, target, (size_t)tl);
    o += sizeof w + (size_t)tl;
    count++;
  }
  rec->aux = count;
  rec->extra_len = (uint32_t)o;
  return 0;
}

static int owns(uint32_t k) { return k == TG_FD_INOTIFY; }

/* The watches of record r, in wd order (insertion sort: a handful); count, or -1 if malformed. */
static int watches(const struct img_fd *f, const struct tg_inotify_watch **out, const char **paths, int cap) {
  size_t o = 0;
  int n = 0;
  while (o < f->r.extra_len) {
    if (n >= cap || o + sizeof(struct tg_inotify_watch) > f->r.extra_len) return -1;
    const struct tg_inotify_watch *w = (const void *)(f->extra + o);
    if (w->path_len == 0 || w->path_len > 4095 || o + sizeof *w + w->path_len > f->r.extra_len || w->wd < 1) return -1;
    int j = n++;
    while (j > 0 && out[j - 1]->wd > w->wd) { out[j] = out[j - 1]; paths[j] = paths[j - 1]; j--; }
    out[j] = w;
    paths[j] = f->extra + o + sizeof *w;
    o += sizeof *w + w->path_len;
  }
  return n == (int)f->r.aux ? n : -1;
}

static int open_one(struct tg_fd_restore *rc, size_t i, char *err, size_t errlen) {
  const struct img_fd *f = &rc->fds[i];
  static const struct tg_inotify_watch *ws[4096];
  static const char *ps[4096];
  int n = watches(f, ws, ps, 4096);
  if (n < 0) { snprintf(err, errlen, "fd %u: malformed inotify record", f->r.fd); return -1; }
  int fd = inotify_init1(IN_CLOEXEC | ((f->r.open_flags & O_NONBLOCK) ? IN_NONBLOCK : 0));
  if (fd < 0) { snprintf(err, errlen, "fd %u: inotify_init1: %s", f->r.fd, strerror(errno)); return -1; }
  /* wd numbers come in order from 1: the ones between the app's are used up on scratch files */
  char scratch[64] = "";
  int nscratch = 0, rc_ = 0;
  for (int k = 0; k < n && rc_ == 0; k++) {
    char p[4096];
    memcpy(p, ps[k], ws[k]->path_len);
    p[ws[k]->path_len] = 0;
    for (;;) {
      int wd = inotify_add_watch(fd, p, ws[k]->mask);
      if (wd < 0) { snprintf(err, errlen, "fd %u: inotify watch %d on %s: %s", f->r.fd, ws[k]->wd, p, strerror(errno)); rc_ = -1; break; }
      if (wd == ws[k]->wd) break;
      if (wd > ws[k]->wd) { snprintf(err, errlen, "fd %u: inotify watch %d on %s came back as %d (two watches on one file?)", f->r.fd, ws[k]->wd, p, wd); rc_ = -1; break; }
      /* too low: that number belongs to no watch of the app; use it up on a scratch file */
      inotify_rm_watch(fd, wd);
      if (!scratch[0]) {
        snprintf(scratch, sizeof scratch, "/tmp/tardigrade-inotify-XXXXXX");
        if (!mkdtemp(scratch)) { snprintf(err, errlen, "fd %u: mkdtemp: %s", f->r.fd, strerror(errno)); scratch[0] = 0; rc_ = -1; break; }
      }
      char sp[128];
      snprintf(sp, sizeof sp, "%s/%d", scratch, nscratch++);
      int sfd = open(sp, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
      if (sfd < 0) { snprintf(err, errlen, "fd %u: %s: %s", f->r.fd, sp, strerror(errno)); rc_ = -1; break; }
      close(sfd);
      /* each scratch file takes the next number, until the app's comes next */
      for (int guard = 0; guard < 1 << 20; guard++) {
        int s = inotify_add_watch(fd, sp, IN_ATTRIB);
        if (s < 0) { snprintf(err, errlen, "fd %u: inotify scratch watch: %s", f->r.fd, strerror(errno)); rc_ = -1; break; }
        inotify_rm_watch(fd, s);
        if (s + 1 >= ws[k]->wd) break;
      }
      if (rc_) break;
    }
  }
  if (scratch[0]) {
    for (int s = 0; s < nscratch; s++) {
      char sp[128];
      snprintf(sp, sizeof sp, "%s/%d", scratch, s);
      unlink(sp);
    }
    rmdir(scratch);
  }
  if (rc_) { close(fd); return -1; }
  /* the scratch watches' IN_IGNORED events are queued: drop them (the app must not see them) */
  if (nscratch > 0) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {}
    if (fl >= 0) fcntl(fd, F_SETFL, fl);
  }
  rc->tmp[i] = tg_res_high(fd, rc->tmp_base, err, errlen);
  return rc->tmp[i] < 0 ? -1 : 0;
}

const struct tg_fd_ops tg_fd_inotify = {.name = "inotify", .describe = describe, .owns = owns, .open = open_one};
