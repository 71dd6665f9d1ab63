/* rmtree: removes a directory tree of any depth and width as root, without following a link,
 * without leaving its file system and with a fixed number of open directories. */
#ifndef PYEXEC_RMTREE_H
#define PYEXEC_RMTREE_H

#include <stdbool.h>
#include <stddef.h>

/* Removes name under the directory top (a file, a link or a tree). Subtrees deeper than a
 * few levels are first renamed into top under random names and removed from there, so top must
 * be a directory no one else can write to, or one whose other entries nothing depends on.
 * Gives up after max_entries entries (a tree something keeps growing). True when all is gone. */
bool rmtree_at(int top, const char *name, size_t max_entries);

#endif
