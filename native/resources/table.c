/* Every fd resource kind, in the order the agent asks them whether an fd is theirs: the first
 * that claims (or refuses) an fd decides. A new kind is a file of this directory and a line here. */
#include "resource.h"

extern const struct tg_fd_ops tg_fd_mqueue, tg_fd_pty, tg_fd_unix_dgram, tg_fd_file, tg_fd_pipe, tg_fd_eventfd, tg_fd_signalfd, tg_fd_timerfd, tg_fd_epoll, tg_fd_inotify, tg_fd_unix, tg_fd_inet, tg_fd_socket;

const struct tg_fd_ops *const tg_fd_kinds[] = {
    &tg_fd_mqueue, /* POSIX message queues: refused by name (they look like files) */
    &tg_fd_pty,    /* the app's ptys (character devices: before file) */
    &tg_fd_file, &tg_fd_pipe, &tg_fd_eventfd, &tg_fd_signalfd, &tg_fd_timerfd, &tg_fd_epoll, &tg_fd_inotify,
    &tg_fd_unix_dgram, /* Unix datagram sockets bound to a name of their own */
    &tg_fd_unix,   /* Unix sockets with both ends inside; claims nothing else */
    &tg_fd_inet,   /* TCP and UDP, IPv4 and IPv6 */
    &tg_fd_socket, /* every other socket: refused by name */
    NULL,
};
