package observe

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// DefaultSocket is where the agent serves its local API.
const DefaultSocket = "/run/sluice/agent.sock"

// ErrInUse means another process serves on the socket path.
var ErrInUse = errors.New("another process is serving on the socket")

// Listen listens on the unix socket path, for Serve. It creates the
// socket's directory (mode 0700) if need be, replaces a stale socket a
// previous agent left, and refuses to replace one that a live process
// serves on (ErrInUse) or a file that is not a socket. The socket has mode
// 0600 from the moment it appears at path: only root (its owner) can
// connect. Closing the listener removes the socket.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the directory of socket %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// Bind under a private name, restrict it, then rename it into place:
	// binding at path directly would leave it open to anyone until the
	// chmod.
	tmp := filepath.Join(dir, "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid()))
	os.Remove(tmp) // a leftover of an earlier process with our pid
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("restrict socket %s to root: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return &socketListener{UnixListener: l, addr: &net.UnixAddr{Name: path, Net: "unix"}, file: fi}, nil
}

// removeStale removes the socket at path if no process serves on it.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: exists and is not a socket; remove it or choose another path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s: %w (is another agent running?)", path, ErrInUse)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// socketListener is a unix listener renamed into place after binding: it
// reports, and on Close removes, the socket's final path, unless another
// process has replaced the socket since.
type socketListener struct {
	*net.UnixListener
	addr *net.UnixAddr
	file fs.FileInfo // the socket as bound
}

func (l *socketListener) Addr() net.Addr { return l.addr }

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.addr.Name); serr == nil && os.SameFile(fi, l.file) {
		if rerr := os.Remove(l.addr.Name); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}
