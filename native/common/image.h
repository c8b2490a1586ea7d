/* Raw process image: C view of docs/format.md (version 1). Keep in step with it. */
#ifndef TG_IMAGE_H
#define TG_IMAGE_H
#include <stdint.h>

#define TG_IMAGE_MAGIC "TGIMAGE"
#define TG_IMAGE_VERSION 1
#define TG_PAGE 4096UL
#define TG_PAGES_PER_RECORD 256

enum tg_rec_type {
  TG_REC_PROC = 1,
  TG_REC_CWD = 2,
  TG_REC_EXE = 3,
  TG_REC_RLIMITS = 4,
  TG_REC_SIGACTIONS = 5,
  TG_REC_VMA = 6,
  TG_REC_THREAD = 7,
  TG_REC_FD = 8,
  TG_REC_PIPE_DATA = 9,
  TG_REC_PAGES = 10,
  TG_REC_END = 11,
  TG_REC_PAGES_CLEAR = 12,
  TG_REC_TRACKING = 13,
  TG_REC_TIMERS = 14,
  TG_REC_SOCKET_DATA = 15,
  TG_REC_FILE_STATE = 16,
  TG_REC_LOCKS = 17,
  TG_REC_INET_REPAIR = 20, /* 20-29: TCP/UDP sockets (docs/format.md) */
  TG_REC_TTY = 21,         /* the process's controlling terminal, one of the app's ptys (resources/pty.c) */
  TG_REC_DGRAM_SENDERS = 22, /* who sent each datagram of a named Unix datagram socket's SOCKET_DATA (resources/unixdgram.c) */
  TG_REC_ATTRS = 40, /* process attributes: prctl flags, personality, timer slack, CPU affinity */
  TG_REC_THREAD_ATTRS = 41, /* one thread's own: nice, scheduling policy, timer slack, CPU affinity */
  TG_REC_CREDS = 45, /* the process's user and group ids, supplementary groups, capabilities, securebits */
  TG_REC_FILE = 30, /* files images only (the daemon's, docs/format.md): the restorer never reads one */
};

struct tg_file_header {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t created_ns;
  uint32_t pid;
  uint32_t flags;
  uint64_t seq;
  uint64_t parent_seq;
  uint32_t page_size;
  uint32_t reserved[2];
  uint32_t header_crc;
};
_Static_assert(sizeof(struct tg_file_header) == 64, "file header");

struct tg_rec_header {
  uint32_t type;
  uint32_t flags;
  uint64_t payload_len;
  uint32_t payload_crc;
  uint32_t reserved[2];
  uint32_t header_crc;
};
_Static_assert(sizeof(struct tg_rec_header) == 32, "record header");

struct tg_file_id {
  uint64_t dev, ino, size, mtime_ns;
  uint32_t mode, reserved;
};
_Static_assert(sizeof(struct tg_file_id) == 40, "file id");

enum { MM_START_CODE, MM_END_CODE, MM_START_DATA, MM_END_DATA, MM_START_STACK, MM_START_BRK,
       MM_BRK, MM_ARG_START, MM_ARG_END, MM_ENV_START, MM_ENV_END, MM_NFIELDS };

struct tg_rec_proc {
  uint32_t pid, ppid, pgid, sid, umask, nthreads;
  uint64_t vvar_addr, vdso_addr, restart_info_addr, trampoline_addr;
  uint64_t mm[MM_NFIELDS];
  uint64_t shared_sigpending;
  uint32_t auxv_len, flags;      /* flags: TG_PROC_* */
  uint8_t auxv[512];
  uint64_t monotonic_ns;
};
_Static_assert(sizeof(struct tg_rec_proc) == 680, "proc");

/* TG_PROC_TRACK_UFFD: the agent tracked written pages with userfaultfd and its tg_restart_info has
 * track_uffd: the restorer arms tracking on the restored memory before any thread runs and hands
 * the uffd over there, so the first checkpoint after the restore is incremental on it. */
enum { TG_PROC_TRACK_UFFD = 1 };

/* ATTRS (40): what prctl, personality and sched_getaffinity say of the process (its main thread) */
struct tg_rec_attrs {
  uint32_t pdeathsig, subreaper, dumpable, no_new_privs;
  uint32_t personality, cpus_len; /* cpus_len: bytes of cpus sched_getaffinity filled */
  uint64_t timerslack_ns;
  uint64_t cpus[16];              /* affinity mask, up to 1024 CPUs */
  int32_t nice;                   /* the main thread's (getpriority) */
  uint32_t sched_policy, sched_priority, sched_flags; /* sched_flags: bit 0 SCHED_RESET_ON_FORK */
};
_Static_assert(sizeof(struct tg_rec_attrs) == 176, "attrs");

/* THREAD_ATTRS (41): what is per thread in Linux, read by each thread itself in its park handler;
 * one record per THREAD record (the same tid), given back by each restored thread before it runs */
struct tg_rec_thread_attrs {
  uint32_t tid;
  int32_t nice;
  uint32_t sched_policy, sched_priority, sched_flags; /* as in ATTRS */
  uint32_t cpus_len;              /* bytes of cpus sched_getaffinity filled (0: not read) */
  uint64_t timerslack_ns;
  uint64_t cpus[16];
};
_Static_assert(sizeof(struct tg_rec_thread_attrs) == 160, "thread attrs");
/* CREDS (45): the credentials of every thread of the process (the agent refuses a process whose
 * threads differ), as /proc/self/status and PR_GET_SECUREBITS say them. */
#define TG_MAX_GROUPS 64
struct tg_rec_creds {
  uint32_t uid[4];             /* real, effective, saved, filesystem */
  uint32_t gid[4];
  uint32_t ngroups, securebits;
  uint64_t cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb;
  uint32_t groups[TG_MAX_GROUPS];
};
_Static_assert(sizeof(struct tg_rec_creds) == 336, "creds");

struct tg_rlimit { uint64_t cur, max; };
#define TG_NRLIMITS 16

struct tg_ksigaction { uint64_t handler, flags, restorer, mask; };

enum tg_vma_kind { TG_VMA_ANON_PRIVATE = 1, TG_VMA_ANON_SHARED = 2, TG_VMA_FILE_PRIVATE = 3,
                   TG_VMA_FILE_SHARED = 4, TG_VMA_VDSO = 5, TG_VMA_VSYSCALL = 6 };
/* TG_VF_CONTENT: a shared writable file mapping whose contents are stored as pages (FILE_STATE) */
/* TG_VF_SYSV: a System V segment's mapping: reserved = its key, id.ino its id, id.size its size,
 * id.mode its permission bits, id.mtime_ns its owner (uid << 32 | gid) */
enum { TG_VF_HEAP = 1, TG_VF_STACK = 2, TG_VF_GROWSDOWN = 4, TG_VF_DELETED = 8, TG_VF_CONTENT = 16, TG_VF_SYSV = 32 };

struct tg_rec_vma {
  uint64_t start, end, pgoff;
  uint32_t prot, kind, vflags, reserved;
  struct tg_file_id id;
  /* path follows */
};
_Static_assert(sizeof(struct tg_rec_vma) == 80, "vma");

enum { TG_THREAD_MANAGER = 1 };
struct tg_rec_thread {
  uint32_t tid, flags;
  uint64_t uc_addr, fs_base, gs_base, clear_child_tid, robust_head, robust_len, rseq_addr;
  uint32_t rseq_len, rseq_sig;
  uint64_t sigpending, rip, rsp;
  char comm[16];
};
_Static_assert(sizeof(struct tg_rec_thread) == 112, "thread");

enum tg_fd_kind { TG_FD_FILE = 1, TG_FD_CHR = 2, TG_FD_DIR = 3, TG_FD_PIPE_R = 4, TG_FD_PIPE_W = 5,
                  TG_FD_FIFO = 6, TG_FD_EVENTFD = 7, TG_FD_EPOLL = 8, TG_FD_UNIX = 9, TG_FD_UNIX_LISTEN = 10, TG_FD_INOTIFY = 11,
                  TG_FD_INET = 13 /* 13-19: TCP/UDP sockets */, TG_FD_UNIX_EXT = 14, TG_FD_SIGNALFD = 15,
                  TG_FD_PTY_MASTER = 16, TG_FD_PTY_SLAVE = 17, /* resources/pty.c */
                  TG_FD_UNIX_DGRAM = 18, /* resources/unixdgram.c */
                  TG_FD_FILE_DELETED = 20 /* 20-24: issue 14's files */, TG_FD_TIMERFD = 25 };
struct tg_rec_fd {
  uint32_t fd, kind, open_flags, fd_flags;
  uint64_t pos;
  struct tg_file_id id;
  uint64_t aux;
  uint32_t extra_len, reserved;
  /* extra follows */
};
_Static_assert(sizeof(struct tg_rec_fd) == 80, "fd");

/* FD kind 25 (timerfd): the FD record's extra. value_ns is the time left until the next expiry
 * (0: disarmed), except with flags bit 0 (TFD_TIMER_ABSTIME) on a CLOCK_REALTIME(_ALARM) timer,
 * where it is the absolute wall-clock deadline; ticks are expirations not yet read. */
struct tg_timerfd {
  uint32_t clockid, flags; /* flags: the timer's TFD_TIMER_ABSTIME (1) and TFD_TIMER_CANCEL_ON_SET (2) */
  uint64_t ticks, value_ns, interval_ns;
};
_Static_assert(sizeof(struct tg_timerfd) == 32, "timerfd");

/* FD kinds 16 (a pty's master, /dev/ptmx) and 17 (its slave, /dev/pts/N): the FD record's extra.
 * The pty is one of the app's own (its private devpts instance, native/launcher); index is N. The
 * terminal state is the slave's (termios and window size, read through either end); locked and
 * packet mode are read from a master only; bytes queued are counted, not kept (docs/format.md). */
enum { TG_PTY_LOCKED = 1, TG_PTY_PACKET = 2, TG_PTY_MASTER_STATE = 4, TG_PTY_HUNGUP = 8 }; /* tg_pty.flags; HUNGUP: a slave whose master was closed (no state) */
struct tg_pty {
  uint32_t index, flags;
  uint32_t in_queued;  /* a slave: bytes the app had not read yet from it (FIONREAD) */
  uint32_t out_queued; /* a master: bytes the app had not read yet from it (FIONREAD) */
  uint16_t rows, cols, xpixel, ypixel;
  uint32_t iflag, oflag, cflag, lflag, ispeed, ospeed; /* the slave's struct termios2 (TCGETS2) */
  uint8_t line, cc[19];
  uint32_t reserved;
};
_Static_assert(sizeof(struct tg_pty) == 72, "pty");

/* TTY (21): the process's controlling terminal, pty index of the app's devpts; the terminal's
 * session (the session leader's pid) and foreground process group, in the app's PID namespace. */
struct tg_rec_tty {
  uint32_t index;
  int32_t sid, fg_pgrp; /* fg_pgrp 0: none */
  uint32_t reserved;
};
_Static_assert(sizeof(struct tg_rec_tty) == 16, "tty");

struct tg_epoll_entry { uint32_t tfd, events; uint64_t data; };
/* tfd bit 31: the process's fd tfd is not the file the entry watches (another process of a tree
 * sharing the set registered it): the restore does not add it from this process */
#define TG_EPOLL_OTHER 0x80000000u

/* FD kind 9 (Unix socket, both ends in the process): the FD record's extra. */
struct tg_unix_sock {
  uint64_t ino, peer_ino;
  uint32_t type;      /* SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5 */
  uint32_t shutdown;  /* bit 0 receive side shut down, bit 1 send side */
  uint32_t sndbuf, rcvbuf; /* as getsockopt returns them */
  int32_t peek_off;   /* SO_PEEK_OFF (-1 = off) */
  uint32_t flags;     /* bit 0: SO_PASSCRED; bit 1: autobound (a kernel-chosen abstract name); bit 2: it had a name (accepted from a named listener): restored unnamed */
};
_Static_assert(sizeof(struct tg_unix_sock) == 40, "unix sock");

/* FD kind 10 (a listening Unix socket bound to a path or an abstract name): the FD record's extra,
 * then name_len bytes of the name (a path, or a NUL then the abstract name). */
struct tg_unix_listen {
  uint32_t type;      /* SOCK_STREAM 1, SOCK_SEQPACKET 5 */
  uint32_t backlog;   /* listen()'s, as sock_diag gives it */
  uint32_t sndbuf, rcvbuf;
  uint32_t flags;     /* bit 0: SO_PASSCRED */
  uint32_t mode;      /* the socket file's mode bits (a path) */
  uint32_t name_len, reserved;
};
_Static_assert(sizeof(struct tg_unix_listen) == 32, "unix listen");

/* FD kind 14 (a Unix socket connected to a peer outside the app): the FD record's extra, then
 * peer_len bytes of the peer's name (a path, or a NUL then an abstract name; 0: unnamed), then
 * name_len bytes of the socket's own name (as sock_diag gives it; shown only). */
enum { TG_UX_RECONNECT = 1, TG_UX_CLOSED = 2, TG_UX_EOF = 3 }; /* tg_unix_ext.action */
struct tg_unix_ext {
  uint32_t type;      /* SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5 */
  uint32_t action;    /* TG_UX_RECONNECT: a datagram socket connected again to the peer's name;
                         TG_UX_CLOSED: made as a connection whose peer has gone (ECONNRESET, then EOF / EPIPE);
                         TG_UX_EOF: its peer had closed its end and nothing was left to read: end of file, EPIPE */
  uint32_t sndbuf, rcvbuf;
  uint32_t flags;     /* bit 0: SO_PASSCRED; bit 1: autobound */
  uint32_t peer_len, name_len, reserved;
};
_Static_assert(sizeof(struct tg_unix_ext) == 32, "unix ext");

/* FD kind 18 (a Unix datagram socket bound to a name of its own): the FD record's extra, then
 * name_len bytes of its name (a path, or a NUL then the abstract name), then peer_len bytes of the
 * name of the socket it is connected to (0: not connected). Its queue: a SOCKET_DATA record. */
struct tg_unix_dgram {
  uint64_t ino;
  uint32_t sndbuf, rcvbuf;
  uint32_t flags;     /* bit 0: SO_PASSCRED */
  uint32_t mode;      /* the socket file's mode bits (a path) */
  uint32_t name_len, peer_len;
};
_Static_assert(sizeof(struct tg_unix_dgram) == 32, "unix dgram");

/* FD kind 13 (TCP or UDP socket, IPv4 or IPv6): the FD record's extra. */
enum { TG_INET_BOUND = 1 };                    /* tg_inet_sock.flags */
enum { TG_IO_REUSEADDR = 1, TG_IO_REUSEPORT = 2, TG_IO_NODELAY = 4, TG_IO_KEEPALIVE = 8, TG_IO_V6ONLY = 16,
       TG_IO_BROADCAST = 32 };                 /* tg_inet_sock.opts */
struct tg_inet_sock {
  uint64_t ino;
  uint16_t family, type, protocol; /* AF_INET 2 / AF_INET6 10; SOCK_STREAM 1 / SOCK_DGRAM 2; IPPROTO_TCP 6 / UDP 17 */
  uint8_t state;                   /* TCP: the kernel's TCP state (1 established, 7 close, 10 listen, ...); UDP: 1 connected, 7 not */
  uint8_t flags;                   /* TG_INET_* */
  uint16_t lport, rport;           /* host order */
  uint32_t scope_id;               /* IPv6 scope of the local address */
  uint8_t laddr[16], raddr[16];    /* network order; IPv4 in the first 4 bytes */
  uint32_t backlog;                /* listen backlog (sk_max_ack_backlog) */
  uint32_t sndbuf, rcvbuf;         /* as getsockopt returns them */
  uint32_t rqueue, wqueue;         /* bytes queued to read / to send (listening: connections waiting, for inspect) */
  uint32_t opts;                   /* TG_IO_* */
  int32_t keepidle, keepintvl, keepcnt; /* TCP keepalive (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) */
  uint32_t reserved;
  int64_t rcvtimeo_us, sndtimeo_us; /* SO_RCVTIMEO, SO_SNDTIMEO (0 = none) */
};
_Static_assert(sizeof(struct tg_inet_sock) == 112, "inet sock");

/* INET_REPAIR: the TCP_REPAIR state of an established connection (both ends in the process: restored
 * whole; flags bit 0, the peer is outside: restored whole only by a planned restore that held its
 * traffic, else closed); then outq_len bytes of its send queue, then inq_len bytes of its receive queue. */
enum { TG_IR_EXTERNAL = 1, TG_IR_LOCAL = 2 }; /* LOCAL (with EXTERNAL): a tree's cut, peer on this host: queues read whole; restored whole when the other end is in another process of the tree */
struct tg_rec_inet_repair {
  uint64_t ino;
  uint32_t snd_seq, rcv_seq;       /* TCP_QUEUE_SEQ of the send queue (after its last byte) and the receive queue */
  uint32_t mss, snd_wscale, rcv_wscale, options; /* options: tcpi_options (TCPI_OPT_*) */
  uint32_t timestamp;              /* TCP_TIMESTAMP */
  uint32_t outq_len, unsent_len, inq_len;
  uint32_t snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup; /* TCP_REPAIR_WINDOW */
  uint32_t flags;                  /* TG_IR_* */
};
_Static_assert(sizeof(struct tg_rec_inet_repair) == 72, "inet repair");

/* SOCKET_DATA: what was queued for reading on socket ino; then the bytes (stream) or nmsg x
 * { u32 len, len bytes } (datagram, seqpacket). */
struct tg_rec_socket_data { uint64_t ino; uint32_t type, nmsg; };
_Static_assert(sizeof(struct tg_rec_socket_data) == 16, "socket data");

/* DGRAM_SENDERS: right after the SOCKET_DATA record of a named Unix datagram socket (FD kind 18)
 * whose queue holds a datagram from a sender with a name: nmsg x { u32 len, len bytes: the
 * sender's sun_path as recvfrom gave it (0: unnamed) }, in the order of SOCKET_DATA's datagrams. */
struct tg_rec_dgram_senders { uint64_t ino; uint32_t nmsg, reserved; };
_Static_assert(sizeof(struct tg_rec_dgram_senders) == 16, "dgram senders");

/* LOCKS: n x struct tg_lock, the file locks the process held through its fds (flock, POSIX
 * record locks it owns, open-file-description locks), as /proc/self/fdinfo lists them. */
enum tg_lock_kind { TG_LOCK_FLOCK = 1, TG_LOCK_POSIX = 2, TG_LOCK_OFD = 3 };
enum tg_lock_type { TG_LOCK_READ = 1, TG_LOCK_WRITE = 2 };
struct tg_lock {
  uint32_t fd, kind, type, reserved;
  uint64_t start, end; /* byte range, end inclusive; end UINT64_MAX: to the end of the file (also flock) */
};
_Static_assert(sizeof(struct tg_lock) == 32, "lock");

struct tg_rec_pages { uint64_t addr, npages; };
struct tg_rec_tracking { uint32_t mode, reserved; uint64_t pages_scanned, pages_written, fresh_mappings; };

/* TIMERS: the fixed part, then ntimers x timer_size bytes, each starting with struct tg_timer */
struct tg_itimer { uint64_t interval_ns, value_ns; }; /* value 0 = disarmed */
enum { TG_NITIMERS = 3 };                              /* ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF */
struct tg_rec_timers {
  uint32_t ntimers, timer_size;
  struct tg_itimer itimers[TG_NITIMERS];
};
_Static_assert(sizeof(struct tg_rec_timers) == 56, "timers");
struct tg_timer {
  int32_t id, clock;
  uint32_t notify, signo; /* sigev_notify (SIGEV_THREAD_ID = 4 included), sigev_signo */
  uint32_t tid;           /* SIGEV_THREAD_ID: the target thread (namespace TID) */
  int32_t overrun;        /* timer_getoverrun at capture (not restorable) */
  uint64_t sigval;        /* sigev_value */
  uint64_t interval_ns, value_ns; /* value 0 = disarmed */
};
_Static_assert(sizeof(struct tg_timer) == 48, "timer");
/* FILE_STATE: a regular file the process holds open for writing or maps shared and writable, as it
 * was at the checkpoint; restore refuses if it changed (docs/format.md). */
enum { TG_FS_FD_WRITE = 1, TG_FS_MAPPED = 2, TG_FS_COVERED = 4, TG_FS_GENERATION = 8 };
#define TG_SHARED_CONTENT_MAX (64ull << 20) /* largest shared writable mapped file captured */
struct tg_rec_file_state {
  uint32_t flags, fd;            /* fd: lowest fd holding it for writing, or UINT32_MAX */
  uint64_t dev, ino, size, mtime_ns, ctime_ns;
  uint32_t generation, mode;     /* generation: FS_IOC_GETVERSION (valid with TG_FS_GENERATION) */
  uint64_t covered;              /* bytes from offset 0 whose contents are stored (TG_FS_COVERED) */
  /* path follows */
};
_Static_assert(sizeof(struct tg_rec_file_state) == 64, "file state");

struct tg_rec_end { uint64_t record_count, pages_total, file_size; };

/* Lives in the agent's memory; the restorer finds it through
 * tg_rec_proc.restart_info_addr and fills it in before resuming the threads. */
struct tg_restart_info {
  volatile int32_t restored;     /* number of restores of this image lineage */
  volatile int32_t pending;      /* threads not yet out of the restorer blob */
  uint64_t blob_addr, blob_len;  /* restorer mapping the manager unmaps */
  char sock_path[108];           /* where the agent listens after restore */
  char sock_base[108];           /* the app's agent socket: a process forked later listens at sock_base.PID */
  /* (only with TG_PROC_TRACK_UFFD in the image) */
  volatile int32_t track_uffd;   /* userfaultfd the restorer armed on the restored memory (write-protect, async), or -1 */
  uint32_t track_regions;        /* mappings it registered */
};

#endif
