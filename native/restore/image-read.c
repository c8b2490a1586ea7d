/* Reads a raw image (docs/format.md) with bounds and CRC checks. */
#include "restore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/crc32c.h"

static const char *type_name(uint32_t t) {
  static const char *n[] = {"?", "PROC", "CWD", "EXE", "RLIMITS", "SIGACTIONS", "VMA", "THREAD", "FD", "PIPE_DATA", "PAGES", "END", "PAGES_CLEAR", "TRACKING", "TIMERS", "SOCKET_DATA", "FILE_STATE", "LOCKS", "?", "?", "INET_REPAIR", "TTY", "DGRAM_SENDERS"};
  if (t == TG_REC_ATTRS) return "ATTRS";
  if (t == TG_REC_THREAD_ATTRS) return "THREAD_ATTRS";
  if (t == TG_REC_CREDS) return "CREDS";
  return t < sizeof n / sizeof *n ? n[t] : "unknown";
}

static int fail(struct image *img, uint64_t off, const char *fmt, const char *a, uint64_t b) {
  fprintf(stderr, "tardigrade-restore: %s: offset %llu: ", img->path, (unsigned long long)off);
  fprintf(stderr, fmt, a, (unsigned long long)b);
  fprintf(stderr, "\n");
  return -1;
}

/* Sequential reads only: the image may be a pipe (a stream assembled by the store). */
static int read_at(int fd, void *buf, size_t len, uint64_t off) {
  (void)off;
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, (char *)buf + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int skip_pad(int fd, uint64_t len) {
  char pad[8];
  size_t n = (size_t)(((len + 7) & ~7ull) - len);
  return n ? read_at(fd, pad, n, 0) : 0;
}

#define GROW(arr, n) do { void *np_ = realloc((arr), ((n) + 1) * sizeof *(arr)); if (!np_) return fail(img, off, "%sout of memory (%llu)", "", n); (arr) = np_; } while (0)

int tg_image_load(const char *path, struct image *img) {
  memset(img, 0, sizeof *img);
  img->path = path;
  /* "-" is stdin; "/dev/fd/N" is taken as the inherited fd N itself (a socket, as node hands extra
   * stdio, cannot be reopened through /proc) */
  int inherited = strncmp(path, "/dev/fd/", 8) == 0 ? atoi(path + 8) : -1;
  img->fd = strcmp(path, "-") == 0 ? fcntl(0, F_DUPFD_CLOEXEC, 3)
            : inherited >= 0       ? fcntl(inherited, F_DUPFD_CLOEXEC, 3)
                                   : open(path, O_RDONLY | O_CLOEXEC);
  if (inherited >= 3 && img->fd >= 0) close(inherited);
  if (img->fd < 0) { fprintf(stderr, "tardigrade-restore: cannot open image %s: %s\n", path, strerror(errno)); return -1; }
  struct stat st;
  if (fstat(img->fd, &st) != 0) return fail(img, 0, "fstat: %s%llu", strerror(errno), 0);
  /* a stream: a larger pipe buffer means fewer, larger reads (the store writes while we read) */
  if (S_ISFIFO(st.st_mode) && fcntl(img->fd, F_SETPIPE_SZ, 1 << 20) < 0) {
    /* above fs.pipe-max-size: the default size works too, only slower */
  }
  /* a stream has no size: truncation then shows as a short read */
  uint64_t size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : UINT64_MAX, off = 0;
  if (size < sizeof img->hdr || read_at(img->fd, &img->hdr, sizeof img->hdr, 0) != 0)
    return fail(img, 0, "%struncated file header (file is %llu bytes)", "", size);
  if (memcmp(img->hdr.magic, TG_IMAGE_MAGIC, 8) != 0) return fail(img, 0, "%snot a tardigrade image (bad magic)%llu", "", 0);
  if (tg_crc32c(0, &img->hdr, 60) != img->hdr.header_crc) return fail(img, 0, "%sfile header CRC mismatch%llu", "", 0);
  if (img->hdr.version != TG_IMAGE_VERSION) return fail(img, 8, "%sunsupported image version %llu", "", img->hdr.version);
  if (img->hdr.flags & 1)
    return fail(img, 28, "%sthis is an incremental image (on seq %llu): restore it through the store, which assembles the chain", "", img->hdr.parent_seq);
  off = sizeof img->hdr;
  int have_proc = 0;
  uint64_t nrec = 0;
  for (;;) {
    struct tg_rec_header h;
    if (off + sizeof h > size || read_at(img->fd, &h, sizeof h, off) != 0)
      return fail(img, off, "%struncated image: record header missing (file is %llu bytes; no END record)", "", size == UINT64_MAX ? off : size);
    if (tg_crc32c(0, &h, 28) != h.header_crc) return fail(img, off, "%srecord header CRC mismatch%llu", "", 0);
    uint64_t poff = off + sizeof h;
    if (h.payload_len > size - poff) return fail(img, off, "truncated %s record: payload of %llu bytes runs past the end of the file", type_name(h.type), h.payload_len);
    uint64_t next = poff + ((h.payload_len + 7) & ~7ull);
    if (h.type == TG_REC_PAGES || h.type == TG_REC_END) {
      /* page data and END are read by the blob, straight into place */
      if (!have_proc) return fail(img, off, "first record is %s, not PROC%llu", type_name(h.type), 0);
      img->next_hdr = h;
      img->next_off = off;
      img->nrec = nrec;
      img->size = size;
      break;
    }
    if (h.payload_len > (64u << 20)) return fail(img, off, "%s record too large (%llu bytes)", type_name(h.type), h.payload_len);
    char *p = malloc(h.payload_len + 1);
    if (!p) return fail(img, off, "%sout of memory (%llu)", "", h.payload_len);
    if (read_at(img->fd, p, h.payload_len, poff) != 0 || skip_pad(img->fd, h.payload_len) != 0)
      return fail(img, off, "truncated %s record (%llu bytes)", type_name(h.type), h.payload_len);
    p[h.payload_len] = 0;
    if (tg_crc32c(0, p, h.payload_len) != h.payload_crc) return fail(img, off, "payload CRC mismatch in %s record (%llu bytes)", type_name(h.type), h.payload_len);
#define NEED(sz) do { if (h.payload_len < (sz)) return fail(img, off, "%s record too short (%llu bytes)", type_name(h.type), h.payload_len); } while (0)
    if (!have_proc && h.type != TG_REC_PROC) return fail(img, off, "first record is %s, not PROC%llu", type_name(h.type), 0);
    switch (h.type) {
    case TG_REC_PROC: NEED(sizeof img->proc); memcpy(&img->proc, p, sizeof img->proc); have_proc = 1; free(p); break;
    case TG_REC_CWD: img->cwd = p; break;
    case TG_REC_EXE: NEED(sizeof img->exe_id); memcpy(&img->exe_id, p, sizeof img->exe_id); img->exe = strdup(p + sizeof img->exe_id); free(p); break;
    case TG_REC_TTY: NEED(sizeof img->tty); memcpy(&img->tty, p, sizeof img->tty); img->has_tty = 1; free(p); break;
    case TG_REC_CREDS: NEED(sizeof img->creds); memcpy(&img->creds, p, sizeof img->creds); img->has_creds = 1; free(p); break;
    case TG_REC_ATTRS: NEED(sizeof img->attrs); memcpy(&img->attrs, p, sizeof img->attrs); img->has_attrs = 1; free(p); break;
    case TG_REC_RLIMITS: NEED(sizeof img->rlimits); memcpy(img->rlimits, p, sizeof img->rlimits); free(p); break;
    case TG_REC_SIGACTIONS: NEED(sizeof img->sigs); memcpy(img->sigs, p, sizeof img->sigs); free(p); break;
    case TG_REC_VMA:
      NEED(sizeof(struct tg_rec_vma));
      GROW(img->vmas, img->nvmas);
      memcpy(&img->vmas[img->nvmas].r, p, sizeof(struct tg_rec_vma));
      img->vmas[img->nvmas].path = strdup(p + sizeof(struct tg_rec_vma));
      if (img->vmas[img->nvmas].r.start >= img->vmas[img->nvmas].r.end || (img->nvmas && img->vmas[img->nvmas].r.start < img->vmas[img->nvmas - 1].r.end))
        return fail(img, off, "%sVMA records out of order or empty at %llx", "", img->vmas[img->nvmas].r.start);
      img->nvmas++;
      free(p);
      break;
    case TG_REC_THREAD:
      NEED(sizeof(struct tg_rec_thread));
      GROW(img->threads, img->nthreads);
      memcpy(&img->threads[img->nthreads++], p, sizeof(struct tg_rec_thread));
      free(p);
      break;
    case TG_REC_THREAD_ATTRS: {
      NEED(sizeof(struct tg_rec_thread_attrs));
      struct tg_rec_thread_attrs ta;
      memcpy(&ta, p, sizeof ta);
      free(p);
      if (!img->nthreads || img->threads[img->nthreads - 1].tid != ta.tid || ta.tid == 0)
        return fail(img, off, "%sTHREAD_ATTRS record of tid %llu does not follow that thread's THREAD record", "", ta.tid);
      if (ta.cpus_len > sizeof ta.cpus) return fail(img, off, "%sTHREAD_ATTRS: cpus_len %llu is over 128 bytes", "", ta.cpus_len);
      GROW(img->thread_attrs, img->nthread_attrs);
      img->thread_attrs[img->nthread_attrs++] = ta;
      break;
    }
    case TG_REC_FD: {
      NEED(sizeof(struct tg_rec_fd));
      struct tg_rec_fd r;
      memcpy(&r, p, sizeof r);
      if (r.extra_len > h.payload_len - sizeof r) return fail(img, off, "%sFD record extra runs past its payload%llu", "", 0);
      GROW(img->fds, img->nfds);
      img->fds[img->nfds].r = r;
      img->fds[img->nfds].extra = p + sizeof r; /* p is kept */
      img->nfds++;
      break;
    }
    case TG_REC_PIPE_DATA:
      NEED(8);
      GROW(img->pipes, img->npipes);
      memcpy(&img->pipes[img->npipes].ino, p, 8);
      img->pipes[img->npipes].data = p + 8;
      img->pipes[img->npipes].len = h.payload_len - 8;
      img->npipes++;
      break;
    case TG_REC_SOCKET_DATA: {
      NEED(sizeof(struct tg_rec_socket_data));
      GROW(img->socks, img->nsocks);
      struct img_sockdata *sd = &img->socks[img->nsocks];
      memcpy(&sd->h, p, sizeof sd->h);
      sd->data = p + sizeof sd->h;
      sd->len = h.payload_len - sizeof sd->h;
      sd->senders = NULL;
      sd->senders_len = 0;
      if (sd->h.type != 1) { /* datagrams: nmsg x { u32 len, bytes } exactly filling the payload */
        uint64_t at = 0, m = 0;
        while (at < sd->len) {
          uint32_t l32;
          if (sd->len - at < 4) return fail(img, off, "%sSOCKET_DATA: datagram %llu has a truncated length", "", m);
          memcpy(&l32, sd->data + at, 4);
          if (l32 > sd->len - at - 4) return fail(img, off, "%sSOCKET_DATA: datagram %llu runs past the payload", "", m);
          at += 4 + (uint64_t)l32;
          m++;
        }
        if (m != sd->h.nmsg) return fail(img, off, "%sSOCKET_DATA: header says %llu datagrams, payload holds a different count", "", sd->h.nmsg);
      }
      img->nsocks++;
      break;
    }
    case TG_REC_DGRAM_SENDERS: {
      NEED(sizeof(struct tg_rec_dgram_senders));
      struct tg_rec_dgram_senders ds;
      memcpy(&ds, p, sizeof ds);
      /* right after its SOCKET_DATA record: one name per datagram, exactly filling the payload */
      struct img_sockdata *sd = img->nsocks ? &img->socks[img->nsocks - 1] : NULL;
      if (!sd || sd->h.ino != ds.ino || sd->h.nmsg != ds.nmsg || sd->senders)
        return fail(img, off, "%sDGRAM_SENDERS record of socket %llu does not follow its SOCKET_DATA record", "", ds.ino);
      uint64_t at = sizeof ds, m = 0;
      while (at < h.payload_len) {
        uint32_t l32;
        if (h.payload_len - at < 4) return fail(img, off, "%sDGRAM_SENDERS: name %llu has a truncated length", "", m);
        memcpy(&l32, p + at, 4);
        if (l32 > 108 || l32 > h.payload_len - at - 4) return fail(img, off, "%sDGRAM_SENDERS: name %llu is too long or runs past the payload", "", m);
        at += 4 + (uint64_t)l32;
        m++;
      }
      if (m != ds.nmsg) return fail(img, off, "%sDGRAM_SENDERS: header says %llu names, payload holds a different count", "", ds.nmsg);
      sd->senders = p + sizeof ds; /* p is kept */
      sd->senders_len = h.payload_len - sizeof ds;
      break;
    }
    case TG_REC_TRACKING: free(p); break; /* statistics only */
    case TG_REC_TIMERS: {
      struct tg_rec_timers th;
      NEED(sizeof th);
      memcpy(&th, p, sizeof th);
      if (img->timers) return fail(img, off, "%ssecond TIMERS record (at most one allowed)%llu", "", 0);
      if (th.timer_size < sizeof(struct tg_timer) || th.ntimers > (h.payload_len - sizeof th) / th.timer_size)
        return fail(img, off, "%sTIMERS record: %llu timers do not fit its payload", "", th.ntimers);
      memcpy(img->itimers, th.itimers, sizeof img->itimers);
      img->timers = calloc(th.ntimers + 1, sizeof *img->timers);
      if (!img->timers) return fail(img, off, "%sout of memory (%llu)", "", th.ntimers);
      for (uint32_t i = 0; i < th.ntimers; i++) memcpy(&img->timers[i], p + sizeof th + (size_t)i * th.timer_size, sizeof *img->timers);
      img->ntimers = th.ntimers;
      free(p);
      break;
    }
    case TG_REC_FILE_STATE:
      NEED(sizeof(struct tg_rec_file_state));
      GROW(img->files, img->nfiles);
      memcpy(&img->files[img->nfiles].r, p, sizeof(struct tg_rec_file_state));
      img->files[img->nfiles].path = strdup(p + sizeof(struct tg_rec_file_state));
      img->nfiles++;
      free(p);
      break;
    case TG_REC_LOCKS:
      if (img->locks) return fail(img, off, "%ssecond LOCKS record (at most one allowed)%llu", "", 0);
      if (h.payload_len % sizeof(struct tg_lock)) return fail(img, off, "%sLOCKS record of %llu bytes is not a whole number of locks", "", h.payload_len);
      img->locks = (struct tg_lock *)p; /* p is kept */
      img->nlocks = h.payload_len / sizeof(struct tg_lock);
      break;
    case TG_REC_INET_REPAIR: {
      NEED(sizeof(struct tg_rec_inet_repair));
      GROW(img->repairs, img->nrepairs);
      struct img_inet_repair *ir = &img->repairs[img->nrepairs];
      memcpy(&ir->h, p, sizeof ir->h);
      ir->data = p + sizeof ir->h; /* p is kept */
      ir->len = h.payload_len - sizeof ir->h;
      if ((uint64_t)ir->h.outq_len + ir->h.inq_len != ir->len || ir->h.unsent_len > ir->h.outq_len)
        return fail(img, off, "%sINET_REPAIR: queue lengths do not match the payload (%llu bytes)", "", ir->len);
      img->nrepairs++;
      break;
    }
    default:
      return fail(img, off, "unknown record type %s (%llu)", type_name(h.type), h.type);
    }
    off = next;
    nrec++;
  }
  if (img->nthreads == 0) return fail(img, 0, "%sno THREAD records%llu", "", 0);
  return 0;
}
