package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
)

// Cluster is a simulated cluster on this host. Every object it creates
// carries its unique id; Close removes all of them. Its methods may be
// called from several goroutines.
type Cluster struct {
	ID     string // unique per cluster, part of every name
	Dir    string // a directory for the cluster's files (mesh file, agent sockets), removed at Close
	bridge string
	cgroup string // cgroup2 directory holding the nodes

	mu      sync.Mutex // guards the lists below
	nodes   []*Node
	pods    []*Pod
	procs   []*exec.Cmd
	daemons []*daemon // agents and control planes, stopped first at Close
	closed  bool      // Close ran: no new daemons
}

// Node is a cgroup subtree with its own bpffs pin directory, as one
// Kubernetes node would have its own agent.
type Node struct {
	Name   string
	Cgroup string // cgroup2 directory whose subtree is this node
	PinDir string // bpffs directory for this node's dataplane
	c      *Cluster
	agent  *Agent // the last agent started, guarded by c.mu
}

// Pod is a network namespace with a veth on the cluster bridge, and a cgroup
// under its node.
type Pod struct {
	Name   string
	IP     netip.Addr
	NetNS  string // name for `ip netns`
	Cgroup string
	Node   *Node
	veth   string
}

// New creates an empty cluster: a bridge and a cgroup subtree.
func New() (_ *Cluster, err error) {
	mount, err := dataplane.Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	id, err := randomID()
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		ID:     id,
		Dir:    filepath.Join(os.TempDir(), "sluice-sim-"+id),
		bridge: "slbr" + id,
		cgroup: filepath.Join(mount, "sluice-sim-"+id),
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := os.Mkdir(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	if err := os.Mkdir(c.cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("create cluster cgroup: %w", err)
	}
	if err := ip("link", "add", c.bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	if err := ip("link", "set", c.bridge, "up"); err != nil {
		return nil, err
	}
	return c, nil
}

// AddNode creates a node: a cgroup subtree and a pin directory name.
func (c *Cluster) AddNode(name string) (*Node, error) {
	n := &Node{
		Name:   name,
		Cgroup: filepath.Join(c.cgroup, name),
		PinDir: filepath.Join(dataplane.DefaultBPFFS, "sluice-sim-"+c.ID+"-"+name),
		c:      c,
	}
	if err := os.Mkdir(n.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("create node cgroup: %w", err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n, nil
}

// AddPod creates a pod on node n with address ip (a /16 on the bridge).
func (n *Node) AddPod(name string, addr netip.Addr) (_ *Pod, err error) {
	c := n.c
	c.mu.Lock()
	idx := len(c.pods)
	c.mu.Unlock()
	p := &Pod{
		Name:   name,
		IP:     addr,
		NetNS:  fmt.Sprintf("sluice-%s-%s", c.ID, name),
		Cgroup: filepath.Join(n.Cgroup, name),
		Node:   n,
		veth:   fmt.Sprintf("slv%s%d", c.ID[:6], idx),
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()

	if err := os.Mkdir(p.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("create pod cgroup: %w", err)
	}
	addAddr := []string{"-n", p.NetNS, "addr", "add", addr.String() + "/16", "dev", "eth0"}
	if addr.Is6() {
		addAddr = []string{"-n", p.NetNS, "addr", "add", addr.String() + "/64", "dev", "eth0", "nodad"}
	}
	steps := [][]string{
		{"netns", "add", p.NetNS},
		{"link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		{"link", "set", p.veth, "master", c.bridge, "up"},
		{"-n", p.NetNS, "link", "set", "lo", "up"},
		addAddr,
		{"-n", p.NetNS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, fmt.Errorf("pod %s: %w", name, err)
		}
	}
	return p, nil
}

// Command prepares a process to run inside the pod's network namespace.
// Start it with Pod.Start so that it also runs in the pod's cgroup.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NetNS, name}, args...)...)
	cmd.WaitDelay = time.Second
	return cmd
}

// Start starts cmd in the pod's cgroup, from its first instruction on. The
// cluster kills it at Close if it is still running.
func (p *Pod) Start(cmd *exec.Cmd) error {
	fd, err := os.Open(p.Cgroup)
	if err != nil {
		return err
	}
	defer fd.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s in pod %s: %w", cmd.Args, p.Name, err)
	}
	c := p.Node.c
	c.mu.Lock()
	c.procs = append(c.procs, cmd)
	c.mu.Unlock()
	return nil
}

// Output runs cmd in the pod to completion and returns its standard output.
func (p *Pod) Output(cmd *exec.Cmd) ([]byte, error) {
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := p.Start(cmd); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		return []byte(out.String()), fmt.Errorf("%w: %s", err, strings.TrimSpace(errOut.String()))
	}
	return []byte(out.String()), nil
}

// Close stops the agents and control planes (SIGTERM, then SIGKILL after
// 10 s), kills every process started in the cluster and removes pods, nodes'
// pin directories, the bridge, the cgroups and Dir. It reports what it could
// not remove. It may be called again; a second call has nothing left to do.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	// Agents first: a running agent would re-pin what is removed below.
	var wg sync.WaitGroup
	for _, d := range c.daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.stop(daemonStopTimeout) // an exit status after SIGTERM is not a cleanup failure
		}()
	}
	wg.Wait()
	for _, cmd := range c.procs {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	}
	for _, p := range c.pods {
		killCgroup(p.Cgroup)
		// The kernel dismantles a namespace some time after its last
		// process and mount are gone, and the veth with it: deleting the
		// veth here takes both ends at once.
		if err := ip("link", "del", p.veth); err != nil && linkExists(p.veth) {
			errs = append(errs, err)
		}
		if err := ip("netns", "del", p.NetNS); err != nil && netnsExists(p.NetNS) {
			errs = append(errs, err)
		}
	}
	for _, n := range c.nodes {
		if err := dataplane.Teardown(n.PinDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ip("link", "del", c.bridge); err != nil && linkExists(c.bridge) {
		errs = append(errs, err)
	}
	for i := len(c.pods) - 1; i >= 0; i-- {
		errs = append(errs, removeCgroup(c.pods[i].Cgroup))
	}
	for _, n := range c.nodes {
		errs = append(errs, removeCgroup(n.Cgroup))
	}
	errs = append(errs, removeCgroup(c.cgroup))
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
	}
	c.pods, c.nodes, c.procs, c.daemons = nil, nil, nil, nil
	return errors.Join(errs...)
}

// killCgroup kills every process in a cgroup (cgroup.kill, Linux 5.14+).
func killCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
}

func removeCgroup(dir string) error {
	var err error
	for range 100 {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond) // killed members take a moment to leave
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// linkExists asks over netlink, in this process's network namespace:
// /sys/class/net shows the namespace sysfs was mounted in, which is not
// this one when tests run in a private namespace (testenv.Main).
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func randomID() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
