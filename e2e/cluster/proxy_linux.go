package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// L7ProxyPort is the port the L7 proxies started here listen on, at their
// node's address.
const L7ProxyPort = 15001

// Proxy is a running `sluice proxy` of a routed node.
type Proxy struct {
	Node   *Node
	Listen netip.AddrPort // the node's address, L7ProxyPort
	d      *daemon
}

// ProxyAddr is where node n's L7 proxy listens: give it to the node's
// agent (--l7-proxy) and to StartProxy.
func (n *Node) ProxyAddr() netip.AddrPort { return netip.AddrPortFrom(n.Addr, L7ProxyPort) }

// StartProxy starts the node's L7 proxy, `sluice proxy`, as a node's own
// process would run: in the node's network namespace (a routed node's)
// and in a cgroup of the node's subtree that is no pod's, following the
// agent's feed on the node's agent socket. It waits until the proxy
// accepts connections.
func (n *Node) StartProxy(ctx context.Context, bin string, args ...string) (*Proxy, error) {
	if n.NetNS == "" {
		return nil, fmt.Errorf("proxy of node %s: the node has no network namespace of its own (AddRoutedNode)", n.Name)
	}
	c := n.c
	dir := filepath.Join(n.Cgroup, "sluice-proxy")
	if _, err := os.Stat(dir); err != nil { // a restarted proxy reuses it
		if err := c.mkCgroup(dir); err != nil {
			return nil, fmt.Errorf("proxy of node %s: %w", n.Name, err)
		}
	}
	p := &Proxy{Node: n, Listen: n.ProxyAddr()}
	// nsenter, not `ip netns exec`: that remounts /sys, hiding the bpffs
	// the agent pinned the maps in.
	all := append([]string{"--net=/run/netns/" + n.NetNS, bin, "proxy",
		"--listen", p.Listen.String(), "--pin-dir", n.PinDir,
		"--agent-socket", filepath.Join(c.Dir, n.Name+".sock")}, args...)
	d, err := c.startDaemonIn("proxy "+n.Name, dir, exec.Command("nsenter", all...))
	if err != nil {
		return nil, err
	}
	p.d = d
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := d.exited(); err != nil {
			return nil, err
		}
		if err := probeInNetns(ctx, n.NetNS, p.Listen); err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("proxy of node %s does not accept connections on %s; its log:\n%s", n.Name, p.Listen, d.log.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeInNetns checks that something accepts TCP connections at addr in
// network namespace netns.
func probeInNetns(ctx context.Context, netns string, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// bash's /dev/tcp: no helper binary needed in the namespace.
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "bash", "-c",
		fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr.Addr(), addr.Port()))
	return cmd.Run()
}

// Log is what the proxy printed so far.
func (p *Proxy) Log() string { return p.d.log.String() }

// Pid is the proxy's process id (that of nsenter, which execs it).
func (p *Proxy) Pid() int { return p.d.cmd.Process.Pid }

// Stop stops the proxy (SIGTERM, then SIGKILL after 10 s).
func (p *Proxy) Stop() error { return p.d.stop(daemonStopTimeout) }
