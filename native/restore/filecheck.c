/* Files written since the checkpoint (issue: files are not rolled back yet). Every regular file the
 * image holds open for writing or maps shared and writable has a FILE_STATE record; a restore
 * refuses, naming the file, if one of them is not the same file in the same state, unless
 * --allow-file-changes. What is exempt: the app's stdout/stderr log (those fds are reopened on this
 * host's log, see fds.c), files only mapped (no fd for writing: their mapped contents are in the
 * image and put back on restore), and the times of a file held by an fd whose contents the image
 * wholly holds (sqlite's -shm): it is compared by identity and size only. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }

/* Held for writing only through stdout/stderr fds that the restore reopens on this host's log. */
static int is_stdio_log(const struct image *img, const struct img_file *f) {
  if (!tg_stdio_log || (f->r.flags & TG_FS_MAPPED)) return 0;
  int log = 0;
  for (size_t i = 0; i < img->nfds; i++) {
    const struct tg_rec_fd *r = &img->fds[i].r;
    if (r->kind != TG_FD_FILE || r->id.dev != f->r.dev || r->id.ino != f->r.ino || (r->open_flags & O_ACCMODE) == O_RDONLY) continue;
    if ((r->fd == 1 || r->fd == 2) && (r->open_flags & O_APPEND)) log = 1;
    else return 0;
  }
  return log;
}

static void fmt_time(uint64_t t, char *out, size_t cap) {
  time_t s = (time_t)(t / 1000000000ull);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, cap - n, ".%09lluZ", (unsigned long long)(t % 1000000000ull));
}

/* Why f is not as it was (into why), or 0 if it is. */
static int changed(const struct img_file *f, char *why, size_t cap) {
  int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) { snprintf(why, cap, "cannot be opened (%s)", strerror(errno)); return 1; }
  struct stat st;
  int gen = 0, have_gen = 0;
  if (fstat(fd, &st) != 0) { snprintf(why, cap, "fstat: %s", strerror(errno)); close(fd); return 1; }
  if (ioctl(fd, FS_IOC_GETVERSION, &gen) == 0) have_gen = 1;
  close(fd);
  if (st.st_dev != f->r.dev || st.st_ino != f->r.ino) {
    snprintf(why, cap, "is another file now (inode %llu, was %llu: replaced, or another host)", (unsigned long long)st.st_ino,
             (unsigned long long)f->r.ino);
    return 1;
  }
  if ((f->r.flags & TG_FS_GENERATION) && (!have_gen || (uint32_t)gen != f->r.generation)) {
    snprintf(why, cap, "is another file now (inode %llu was reused: generation %u, was %u)", (unsigned long long)st.st_ino,
             (unsigned)gen, f->r.generation);
    return 1;
  }
  if ((uint64_t)st.st_size != f->r.size) {
    snprintf(why, cap, "changed since the checkpoint (size %llu bytes, was %llu)", (unsigned long long)st.st_size,
             (unsigned long long)f->r.size);
    return 1;
  }
  /* contents wholly stored in the image (shared writable mappings) are put back: times do not matter */
  if (f->r.flags & TG_FS_COVERED) return 0;
  if (ns(&st.st_mtim) != f->r.mtime_ns || ns(&st.st_ctim) != f->r.ctime_ns) {
    char a[48], b[48];
    int m = ns(&st.st_mtim) != f->r.mtime_ns;
    fmt_time(m ? ns(&st.st_mtim) : ns(&st.st_ctim), a, sizeof a);
    fmt_time(m ? f->r.mtime_ns : f->r.ctime_ns, b, sizeof b);
    snprintf(why, cap, "changed since the checkpoint (%s %s, was %s)", m ? "modified" : "inode changed", a, b);
    return 1;
  }
  return 0;
}

int tg_check_file_states(const struct image *img, int allow, char *err, size_t errlen) {
  size_t n = 0, bad = 0;
  err[0] = 0;
  for (size_t i = 0; i < img->nfiles; i++) {
    const struct img_file *f = &img->files[i];
    char why[256];
    /* mapped only (no fd for writing): its mapped contents are in the image and put back */
    if (!(f->r.flags & TG_FS_FD_WRITE) || is_stdio_log(img, f) || !changed(f, why, sizeof why)) continue;
    bad++;
    if (allow || bad > 3) continue;
    char held[64];
    if (f->r.flags & TG_FS_FD_WRITE) snprintf(held, sizeof held, "open for writing as fd %u", f->r.fd);
    else snprintf(held, sizeof held, "mapped shared and writable");
    n += (size_t)snprintf(err + n, n < errlen ? errlen - n : 0, "%s%s (%s) %s", bad > 1 ? "; " : "", f->path, held, why);
    if (n >= errlen) n = errlen - 1;
  }
  if (allow || !bad) return 0;
  if (bad > 3) n += (size_t)snprintf(err + n, n < errlen ? errlen - n : 0, "; and %zu more", bad - 3);
  return -1;
}

int tg_content_file_usable(const struct image *img, const struct tg_rec_vma *v, int fd) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_dev != v->id.dev || st.st_ino != v->id.ino) return 0;
  /* the captured range must lie inside the file (pages past its end would fault) */
  uint64_t need = v->pgoff + (v->end - v->start);
  if (need > v->id.size) need = v->id.size;
  if ((uint64_t)st.st_size < need) return 0;
  for (size_t i = 0; i < img->nfiles; i++) {
    const struct tg_rec_file_state *r = &img->files[i].r;
    if (r->dev != v->id.dev || r->ino != v->id.ino || !(r->flags & TG_FS_GENERATION)) continue;
    int gen = 0;
    if (ioctl(fd, FS_IOC_GETVERSION, &gen) != 0 || (uint32_t)gen != r->generation) return 0;
  }
  return 1;
}
