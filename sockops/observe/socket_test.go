package observe_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/sockops/observe"
)

func TestServerListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "sluice")
	path := filepath.Join(dir, "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr() = %q, want %q", got, path)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v, %v; want mode 0700", di.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want the socket alone", len(entries))
	}
	// A live socket is not replaced.
	if _, err := observe.Listen(path); !errors.Is(err, observe.ErrInUse) {
		t.Errorf("Listen on a live socket: %v, want ErrInUse", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close, the socket is still there (%v)", err)
	}

	// A stale socket, left by a process that died, is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	l, err = observe.Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()

	// Anything else is left alone.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := observe.Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v, want an error saying it is not a socket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Errorf("the regular file was changed: %q", b)
	}
}

func TestClientDialNoAgent(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, path := range []string{missing, stale} {
		_, err := observe.Dial(path)
		if !errors.Is(err, observe.ErrNotRunning) {
			t.Errorf("Dial(%s) = %v, want ErrNotRunning", path, err)
			continue
		}
		for _, want := range []string{path, "not running", "path"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Dial(%s) error %q does not say %q", path, err, want)
			}
		}
	}
}

// An agent that stops after Dial: requests say it is not running.
func TestClientAgentGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := observe.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	_, err = c.Status(context.Background())
	if !errors.Is(err, observe.ErrNotRunning) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "http://") {
		t.Errorf("Status with no agent = %v, want ErrNotRunning naming %s", err, path)
	}
}
