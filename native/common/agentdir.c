/* POSIX ACL entries added with setxattr("system.posix_acl_access") (the format of
 * linux/posix_acl_xattr.h: a version word, then {tag, perm, id} entries sorted by tag and id). */
#include "agentdir.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define ACL_XATTR "system.posix_acl_access"
#define ACL_VERSION 2
enum { T_USER_OBJ = 1, T_USER = 2, T_GROUP_OBJ = 4, T_GROUP = 8, T_MASK = 0x10, T_OTHER = 0x20 };
struct acl_entry { uint16_t tag, perm; uint32_t id; };
#define MAX_ENTRIES 64

static int add_user_entry(const char *path, uint32_t uid, uint16_t perm, char *err, size_t errlen) {
  struct stat st;
  if (stat(path, &st) != 0) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); return -1; }
  if (st.st_uid == uid) return 0;
  struct { uint32_t version; struct acl_entry e[MAX_ENTRIES + 2]; } acl;
  ssize_t n = getxattr(path, ACL_XATTR, &acl, sizeof acl);
  size_t ne;
  if (n < 0 && (errno == ENODATA || errno == ENOTSUP)) {
    if (errno == ENOTSUP) { snprintf(err, errlen, "%s: its file system has no POSIX ACLs (needed to let uid %u reach the agent's socket)", path, uid); return -1; }
    acl.version = ACL_VERSION;
    acl.e[0] = (struct acl_entry){T_USER_OBJ, (uint16_t)((st.st_mode >> 6) & 7), (uint32_t)-1};
    acl.e[1] = (struct acl_entry){T_GROUP_OBJ, (uint16_t)((st.st_mode >> 3) & 7), (uint32_t)-1};
    acl.e[2] = (struct acl_entry){T_OTHER, (uint16_t)(st.st_mode & 7), (uint32_t)-1};
    ne = 3;
  } else if (n < (ssize_t)sizeof(uint32_t) || acl.version != ACL_VERSION || (n - 4) % sizeof(struct acl_entry)) {
    snprintf(err, errlen, "%s: cannot read its ACL: %s", path, n < 0 ? strerror(errno) : "unexpected format");
    return -1;
  } else {
    ne = (size_t)(n - 4) / sizeof(struct acl_entry);
    if (ne > MAX_ENTRIES) { snprintf(err, errlen, "%s: too many ACL entries", path); return -1; }
  }
  int found = 0, have_mask = 0;
  uint16_t group_perms = 0;
  for (size_t i = 0; i < ne; i++) {
    if (acl.e[i].tag == T_USER && acl.e[i].id == uid) {
      if ((acl.e[i].perm & perm) == perm) found = 2;
      else { acl.e[i].perm |= perm; found = 1; }
    }
    if (acl.e[i].tag == T_MASK) have_mask = 1;
    if (acl.e[i].tag == T_GROUP_OBJ || acl.e[i].tag == T_GROUP || acl.e[i].tag == T_USER) group_perms |= acl.e[i].perm;
  }
  if (found == 2) {
    for (size_t i = 0; i < ne; i++) if (acl.e[i].tag == T_MASK && (acl.e[i].perm & perm) == perm) return 0;
  }
  if (!found) {
    /* insert in (tag, id) order */
    size_t at = 0;
    while (at < ne && (acl.e[at].tag < T_USER || (acl.e[at].tag == T_USER && acl.e[at].id < uid))) at++;
    memmove(&acl.e[at + 1], &acl.e[at], (ne - at) * sizeof *acl.e);
    acl.e[at] = (struct acl_entry){T_USER, perm, uid};
    ne++;
    group_perms |= perm;
  }
  if (have_mask) {
    for (size_t i = 0; i < ne; i++) if (acl.e[i].tag == T_MASK) acl.e[i].perm |= perm;
  } else {
    size_t at = 0;
    while (at < ne && acl.e[at].tag < T_MASK) at++;
    memmove(&acl.e[at + 1], &acl.e[at], (ne - at) * sizeof *acl.e);
    acl.e[at] = (struct acl_entry){T_MASK, group_perms, (uint32_t)-1};
    ne++;
  }
  if (setxattr(path, ACL_XATTR, &acl, 4 + ne * sizeof(struct acl_entry), 0) != 0) {
    snprintf(err, errlen, "cannot let uid %u reach %s (setting its ACL): %s", uid, path, strerror(errno));
    return -1;
  }
  return 0;
}

/* Search on every ancestor of path (path itself excluded) that others may not search. */
static int grant_ancestors(const char *path, uint32_t uid, char *err, size_t errlen) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  for (char *p = strrchr(dir, '/'); p && p != dir; p = strrchr(dir, '/')) {
    *p = 0;
    struct stat st;
    if (stat(dir, &st) != 0) { snprintf(err, errlen, "%s: %s", dir, strerror(errno)); return -1; }
    if (!(st.st_mode & S_IXOTH) && add_user_entry(dir, uid, 1 /* search */, err, errlen) != 0) return -1;
  }
  return 0;
}

int tg_grant_read(const char *path, uint32_t uid, char *err, size_t errlen) {
  if (uid == 0 || uid == (uint32_t)-1) return 0;
  struct stat st;
  if (stat(path, &st) != 0) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); return -1; }
  if (!(st.st_mode & S_IROTH) && add_user_entry(path, uid, 4 /* read */, err, errlen) != 0) return -1;
  return grant_ancestors(path, uid, err, errlen);
}

int tg_grant_agent_dir(const char *sock_base, uint32_t uid, char *err, size_t errlen) {
  if (uid == 0 || uid == (uint32_t)-1) return 0;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", sock_base);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) { snprintf(err, errlen, "the agent socket %s has no directory of its own", sock_base); return -1; }
  *slash = 0;
  if (add_user_entry(dir, uid, 3 /* write, search */, err, errlen) != 0) return -1;
  /* the files journal (appended to), the write-ahead copies table (mapped read-write) and their
   * log (saved pages appended to), when they exist already (made by root); made later by this
   * user, they are its own (the daemon grants the log to the app's users at each cut too) */
  static const char *const shared[] = {"files.journal", "files.cow", "files.cow-log"};
  for (size_t i = 0; i < sizeof shared / sizeof *shared; i++) {
    char f[4200];
    snprintf(f, sizeof f, "%s/%s", dir, shared[i]);
    if (access(f, F_OK) == 0 && add_user_entry(f, uid, 6 /* read, write */, err, errlen) != 0) return -1;
  }
  /* every ancestor the user could not search */
  return grant_ancestors(dir, uid, err, errlen);
}
