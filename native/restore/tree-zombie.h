/* A zombie's own credentials, set before it ends (tree-zombie.c). */
#ifndef TG_TREE_ZOMBIE_H
#define TG_TREE_ZOMBIE_H
#include <stddef.h>

/* Notes zombie pid's credentials from the tail of its --zombie argument ("R,E,S,FS:R,E,S,FS[:G,...]",
 * uids then gids then groups). 0, or -1 if malformed. */
int tg_zombie_note_creds(int pid, const char *s);

/* In the zombie (pid), before it exits: takes its noted credentials (none noted: nothing). 0, or -1
 * with why in err. */
int tg_zombie_take_creds(int pid, char *err, size_t errlen);
#endif
