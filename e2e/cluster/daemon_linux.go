package cluster

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemonStopTimeout is how long Close waits for an agent or control plane
// to exit after SIGTERM before it kills it.
const daemonStopTimeout = 10 * time.Second

// daemon is a long-running sluice process of the cluster (an agent or a
// control plane) that runs on the host, outside any pod, with its output
// kept in memory.
type daemon struct {
	name string // for errors: "agent a", "control plane"
	cmd  *exec.Cmd
	log  LogBuffer
	done chan struct{} // closed once the process has exited and err is set
	err  error         // the exit status
}

// startDaemon starts bin with args and registers it with the cluster, which
// stops it at Close.
func (c *Cluster) startDaemon(name, bin string, args ...string) (*daemon, error) {
	return c.startDaemonIn(name, "", exec.Command(bin, args...))
}

// startDaemonIn starts cmd as a daemon of the cluster in cgroup dir (none:
// the caller's).
func (c *Cluster) startDaemonIn(name, dir string, cmd *exec.Cmd) (*daemon, error) {
	d := &daemon{name: name, done: make(chan struct{}), cmd: cmd}
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	// Should the caller die without Close, the daemon goes with it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if dir != "" {
		fd, err := os.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		defer fd.Close()
		d.cmd.SysProcAttr.UseCgroupFD, d.cmd.SysProcAttr.CgroupFD = true, int(fd.Fd())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("start %s: cluster %s is closed", name, c.ID)
	}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	c.daemons = append(c.daemons, d)
	return d, nil
}

// stop sends SIGTERM, and SIGKILL if the process has not exited within
// timeout. It returns the exit status; stopping a stopped daemon returns
// the status it had.
func (d *daemon) stop(timeout time.Duration) error {
	select {
	case <-d.done:
		return d.err
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM and was killed", d.name, timeout)
	}
	return d.err
}

// exited returns an error saying the daemon exited, with the end of its
// log, or nil while it runs.
func (d *daemon) exited() error {
	select {
	case <-d.done:
		return fmt.Errorf("%s exited (%v); its log ends:\n%s", d.name, d.err, d.log.tail(40))
	default:
		return nil
	}
}

// LogBuffer keeps a process's output; it is written and read
// concurrently.
type LogBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tail returns the last n lines.
func (l *LogBuffer) tail(n int) string {
	lines := strings.SplitAfter(strings.TrimRight(l.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// FreeAddr returns an address on 127.0.0.1 with a TCP port nothing listens
// on now. Another process could take it before it is used; in the private
// network namespace of a test (testenv.Main) nothing else does.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
