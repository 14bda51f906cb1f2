package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Workload describes the pod as a workload of a mesh file: its name, node,
// cgroup and address, running as serviceAccount in namespace.
func (p *Pod) Workload(namespace, serviceAccount string) Workload {
	return Workload{
		Name:           p.Name,
		Namespace:      namespace,
		ServiceAccount: serviceAccount,
		Node:           p.Node.Name,
		Cgroup:         p.Cgroup,
		IPs:            []netip.Addr{p.IP},
	}
}

// Dial connects to address from the pod's network namespace. The socket
// belongs to this process, not to the pod's cgroup, so Sluice's programs
// do not act on it: use it to see whether a server in a pod listens, not
// to test the mesh.
func (p *Pod) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		conn, restored, err := p.dialInNetNS(ctx, network, address)
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise the thread stays locked and Go ends it with this
		// goroutine, so no other goroutine runs in the pod's namespace.
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// dialInNetNS switches the calling thread, which must be locked, to the
// pod's network namespace, dials, and switches back. restored is false if
// the thread could not be switched back.
//
// Ending the thread is the last resort, not the way: a process started
// with Pdeathsig (Pod.Start) gets its signal when the thread that forked
// it ends, and any thread may have.
func (p *Pod) dialInNetNS(ctx context.Context, network, address string) (_ net.Conn, restored bool, _ error) {
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, true, fmt.Errorf("open own network namespace: %w", err)
	}
	defer orig.Close()
	ns, err := os.Open(filepath.Join("/run/netns", p.NetNS))
	if err != nil {
		return nil, true, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("enter network namespace of pod %s: %w", p.Name, err)
	}
	// The socket is created on this thread, so in the pod's namespace,
	// and stays there.
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	return conn, unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil, err
}

// WaitListening waits until a TCP connection to address from the pod's
// network namespace succeeds: a server started in the pod is ready.
func (p *Pod) WaitListening(ctx context.Context, address string) error {
	for {
		conn, err := p.Dial(ctx, "tcp", address)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on %s in pod %s: %w (last: %v)", address, p.Name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
