"""Run inside the image: the restricted tier lets a script read every world-readable file, so
none may hold a secret, and run every executable one, so none may be setuid or setgid. Looks
for private keys and credentials readable by others, checks that the files that hold secrets on
a Debian system are not, and that no program is setuid or setgid. Exit status 1 lists what it
found."""
import os
import stat
import sys

SKIP = ("/proc", "/sys", "/dev")
SECRET_MARKERS = (b"PRIVATE KEY-----", b"BEGIN OPENSSH PRIVATE", b"aws_secret_access_key",
                  b"\"private_key\":")
MUST_BE_PRIVATE = ("/etc/shadow", "/etc/gshadow", "/root")

found, scanned = [], 0
me = os.path.abspath(__file__)
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
    for name in files:
        path = os.path.join(root, name)
        if path == me:
            continue
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH:
                continue
            scanned += 1
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            continue
        if any(m in head for m in SECRET_MARKERS):
            found.append(f"world-readable and looks secret: {path}")
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"setuid or setgid: {path}")
for path in MUST_BE_PRIVATE:
    if os.path.lexists(path) and os.lstat(path).st_mode & stat.S_IROTH:
        found.append(f"readable by others: {path}")
print(f"scanned {scanned} world-readable files", file=sys.stderr)
for line in found:
    print(line, file=sys.stderr)
sys.exit(1 if found else 0)
