#include "sysfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

ssize_t sysfile_read(int dir, const char *path, char *out, size_t n)
{
	int fd = openat(dir, path, O_RDONLY | O_CLOEXEC);
	ssize_t len;

	if (fd < 0)
		return -1;
	do
		len = read(fd, out, n - 1);
	while (len < 0 && errno == EINTR);
	close(fd);
	out[len > 0 ? len : 0] = '\0';
	return len;
}

int sysfile_write(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t len = strlen(text);
	ssize_t n;
	int saved;

	if (fd < 0)
		return -1;
	n = write(fd, text, len);
	saved = errno;
	close(fd);
	errno = saved;
	return n == (ssize_t)len ? 0 : -1;
}
