/* rmtree: removes a directory tree of any depth and width as root, without following a link,
 * without leaving its file system and with a fixed number of open directories. */
#ifndef PYEXEC_RMTREE_H
#define PYEXEC_RMTREE_H

#include <stdbool.h>
#include <stddef.h>

/* Removes name under the directory parent (a file, a link or a tree). Subtrees deeper than a
 * few levels are first renamed, under random names, into the tree's own top directory and
 * removed from there. Gives up after max_entries entries (a tree something keeps growing);
 * what is left is all under name, and a later call goes on where this one stopped. True when
 * all is gone. */
bool rmtree_at(int top, const char *name, size_t max_entries);

#endif
