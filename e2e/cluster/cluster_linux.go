package cluster

import (
	"cmp"
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
	"slices"
	"strconv"
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
	cgroups []string  // cgroups made below nodes besides pods' (AddPodAt's parents, SubCgroup)
	closed  bool      // Close ran: no new daemons
}

// Node is a cgroup subtree with its own bpffs pin directory, as one
// Kubernetes node would have its own agent.
//
// A node made by AddNode puts its pods straight on the cluster bridge. A
// node made by AddRoutedNode has a network namespace of its own, the node's
// host namespace, which routes between its pods and the bridge: each pod
// has a /32 address and a default route to the node, and the node answers
// ARP on the bridge for its pods (proxy ARP). Packets between pods then
// pass through a node's namespace as on a real node, where netfilter rules
// (kube-proxy's, for instance) can act on them.
type Node struct {
	Name   string
	Cgroup string // cgroup2 directory whose subtree is this node
	PinDir string // bpffs directory for this node's dataplane
	NetNS  string // the node's own network namespace (for `ip netns`); empty unless routed
	Addr   netip.Addr
	c      *Cluster
	uplink string // routed: the veth from the bridge to NetNS
	agent  *Agent // the last agent started, guarded by c.mu
}

// Pod is a network namespace with a veth on the cluster bridge (or to its
// routed node), and a cgroup under its node.
type Pod struct {
	Name   string
	IP     netip.Addr
	NetNS  string // name for `ip netns`
	Cgroup string
	Node   *Node
	veth   string
	extra  []netip.Addr // more addresses of the pod (AddAddr), routed nodes only
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

// RoutedNodeAddrs is where routed nodes' addresses on the bridge come
// from, one per node in order: keep pods out of it.
var RoutedNodeAddrs = netip.MustParsePrefix("10.244.255.0/24")

// podGateway is each routed pod's default gateway: an address the node
// holds on every pod's veth.
const podGateway = "169.254.1.1"

// AddRoutedNode creates a node with a network namespace of its own that
// routes for its pods (see Node). Its pods must have IPv4 addresses.
func (c *Cluster) AddRoutedNode(name string) (_ *Node, err error) {
	c.mu.Lock()
	routed := 0
	for _, n := range c.nodes {
		if n.NetNS != "" {
			routed++
		}
	}
	c.mu.Unlock()
	if routed >= 250 {
		return nil, errors.New("routed node: no address left in " + RoutedNodeAddrs.String())
	}
	addr := RoutedNodeAddrs.Addr().As4()
	addr[3] = byte(routed + 1)
	n, err := c.AddNode(name)
	if err != nil {
		return nil, err
	}
	n.NetNS = fmt.Sprintf("sluice-%s-node-%s", c.ID, name)
	n.Addr = netip.AddrFrom4(addr)
	n.uplink = fmt.Sprintf("slv%sn%d", c.ID[:6], routed)
	steps := [][]string{
		{"netns", "add", n.NetNS},
		{"-n", n.NetNS, "link", "set", "lo", "up"},
		{"link", "add", n.uplink, "type", "veth", "peer", "name", "uplink", "netns", n.NetNS},
		{"link", "set", n.uplink, "master", c.bridge, "up"},
		{"-n", n.NetNS, "addr", "add", n.Addr.String() + "/16", "dev", "uplink"},
		{"-n", n.NetNS, "link", "set", "uplink", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, fmt.Errorf("routed node %s: %w", name, err)
		}
	}
	if err := sysctl(n.NetNS,
		"net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0",
		"net.ipv4.conf.uplink.proxy_arp=1",
		"net.ipv4.neigh.uplink.proxy_delay=0", // answer for pods at once
	); err != nil {
		return nil, fmt.Errorf("routed node %s: %w", name, err)
	}
	return n, nil
}

// sysctl sets sysctls (key=value) in network namespace netns.
func sysctl(netns string, settings ...string) error {
	args := append([]string{"netns", "exec", netns, "sysctl", "-q", "-w"}, settings...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl %s in %s: %v: %s", strings.Join(settings, " "), netns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddPod creates a pod on node n with address ip (a /16 on the bridge).
func (n *Node) AddPod(name string, addr netip.Addr) (*Pod, error) {
	return n.AddPodAt(name, addr, name)
}

// AddPodAt creates a pod as AddPod does, with its cgroup at cgroup, a
// relative path below the node's cgroup (as a kubelet lays pods out),
// creating the directories on the way.
func (n *Node) AddPodAt(name string, addr netip.Addr, cgroup string) (_ *Pod, err error) {
	c := n.c
	rel := filepath.Clean(cgroup)
	if rel == "." || filepath.IsAbs(rel) || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("pod %s: cgroup %q is not a path below the node's cgroup", name, cgroup)
	}
	c.mu.Lock()
	idx := len(c.pods)
	c.mu.Unlock()
	p := &Pod{
		Name:   name,
		IP:     addr,
		NetNS:  fmt.Sprintf("sluice-%s-%s", c.ID, name),
		Cgroup: filepath.Join(n.Cgroup, rel),
		Node:   n,
		veth:   fmt.Sprintf("slv%s%d", c.ID[:6], idx),
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()

	if err := c.mkCgroup(p.Cgroup); err != nil {
		return nil, fmt.Errorf("create pod cgroup: %w", err)
	}
	if n.NetNS != "" && !addr.Is4() {
		return nil, fmt.Errorf("pod %s: routed node %s takes IPv4 pods only, not %s", name, n.Name, addr)
	}
	if err := p.plumb(); err != nil {
		return nil, err
	}
	return p, nil
}

// plumb creates the pod's network namespace and links it to the bridge,
// or to its routed node.
func (p *Pod) plumb() error {
	n := p.Node
	var steps [][]string
	switch {
	case n.NetNS != "":
		steps = [][]string{
			{"netns", "add", p.NetNS},
			{"-n", n.NetNS, "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "address", p.mac(), "netns", p.NetNS},
			{"-n", n.NetNS, "addr", "add", podGateway + "/32", "dev", p.veth},
			{"-n", n.NetNS, "link", "set", p.veth, "up"},
			{"-n", p.NetNS, "link", "set", "lo", "up"},
			{"-n", p.NetNS, "link", "set", "eth0", "up"},
			{"-n", p.NetNS, "route", "add", podGateway, "dev", "eth0", "scope", "link"},
			{"-n", p.NetNS, "route", "add", "default", "via", podGateway, "dev", "eth0"},
		}
		for _, a := range append([]netip.Addr{p.IP}, p.extra...) {
			steps = append(steps,
				[]string{"-n", p.NetNS, "addr", "add", a.String() + "/32", "dev", "eth0"},
				[]string{"-n", n.NetNS, "route", "add", a.String() + "/32", "dev", p.veth})
		}
	default:
		addAddr := []string{"-n", p.NetNS, "addr", "add", p.IP.String() + "/16", "dev", "eth0"}
		if p.IP.Is6() {
			addAddr = []string{"-n", p.NetNS, "addr", "add", p.IP.String() + "/64", "dev", "eth0", "nodad"}
		}
		steps = [][]string{
			{"netns", "add", p.NetNS},
			{"link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "address", p.mac(), "netns", p.NetNS},
			{"link", "set", p.veth, "master", n.c.bridge, "up"},
			{"-n", p.NetNS, "link", "set", "lo", "up"},
			addAddr,
			{"-n", p.NetNS, "link", "set", "eth0", "up"},
		}
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	return nil
}

// mac is the pod's MAC address, made from its IP address: a renewed pod
// keeps it, so what its neighbours learnt of it stays true.
func (p *Pod) mac() string {
	b := p.IP.AsSlice()
	b = b[len(b)-4:]
	return fmt.Sprintf("02:5e:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// unplumb removes the pod's network namespace and its veth. Deleting the
// veth takes both ends at once; the kernel would otherwise dismantle the
// namespace, and the veth with it, some time after its last process and
// mount are gone.
func (p *Pod) unplumb() error {
	var errs []error
	if ns := p.Node.NetNS; ns == "" {
		if err := ip("link", "del", p.veth); err != nil && linkExists(p.veth) {
			errs = append(errs, err)
		}
	} else if netnsExists(ns) {
		if err := ip("-n", ns, "link", "del", p.veth); err != nil && ip("-n", ns, "link", "show", p.veth) == nil {
			errs = append(errs, err)
		}
	}
	if err := ip("netns", "del", p.NetNS); err != nil && netnsExists(p.NetNS) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Renew gives the pod a fresh network namespace, with the same addresses,
// and keeps its cgroup: no socket, TIME_WAIT or conntrack entry of the old
// namespace is left to meet the next connections. Processes still running
// in the pod's network namespace are killed first.
func (p *Pod) Renew() error {
	if err := killProcesses(p.Cgroup); err != nil {
		return fmt.Errorf("renew pod %s: %w", p.Name, err)
	}
	if err := p.unplumb(); err != nil {
		return err
	}
	return p.plumb()
}

// AddAddr gives a pod on a routed node one more IPv4 address, which its
// node routes to it.
func (p *Pod) AddAddr(a netip.Addr) error {
	if p.Node.NetNS == "" || !a.Is4() {
		return fmt.Errorf("pod %s: extra addresses are for IPv4 pods of routed nodes", p.Name)
	}
	for _, s := range [][]string{
		{"-n", p.NetNS, "addr", "add", a.String() + "/32", "dev", "eth0"},
		{"-n", p.Node.NetNS, "route", "add", a.String() + "/32", "dev", p.veth},
	} {
		if err := ip(s...); err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	p.extra = append(p.extra, a)
	return nil
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
func (p *Pod) Start(cmd *exec.Cmd) error { return p.StartIn(cmd, p.Cgroup) }

// mkCgroup creates the cgroup dir and the missing directories above it,
// recording each for removal at Close.
func (c *Cluster) mkCgroup(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("cgroup %s exists already", dir)
	}
	var made []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append(made, d)
	}
	slices.Reverse(made)
	for _, d := range made {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		c.mu.Lock()
		c.cgroups = append(c.cgroups, d)
		c.mu.Unlock()
	}
	return nil
}

// SubCgroup creates a cgroup named name below the pod's, as a container's
// is, and returns its directory. Start processes in it with StartIn.
func (p *Pod) SubCgroup(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/") || name == "." || name == ".." {
		return "", fmt.Errorf("pod %s: %q is not a cgroup name", p.Name, name)
	}
	dir := filepath.Join(p.Cgroup, name)
	if err := p.Node.c.mkCgroup(dir); err != nil {
		return "", fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return dir, nil
}

// StartIn starts cmd in cgroup dir, one of the pod's cgroups (SubCgroup),
// as Start does in the pod's own.
func (p *Pod) StartIn(cmd *exec.Cmd, dir string) error {
	if dir != p.Cgroup && !strings.HasPrefix(dir, p.Cgroup+"/") {
		return fmt.Errorf("start %s in pod %s: cgroup %s is not the pod's", cmd.Args, p.Name, dir)
	}
	fd, err := os.Open(dir)
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

// Remove deletes the pod before the cluster is closed: it kills the pod's
// processes, removes its network namespace, veth and cgroups. The pod is
// unusable afterwards.
func (p *Pod) Remove() error {
	c := p.Node.c
	killCgroup(p.Cgroup) // the whole subtree; the cgroups go too
	errs := []error{p.unplumb()}
	c.mu.Lock()
	var dirs []string
	for _, d := range c.cgroups {
		if strings.HasPrefix(d, p.Cgroup+"/") {
			dirs = append(dirs, d)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	for _, d := range append(dirs, p.Cgroup) {
		errs = append(errs, removeCgroup(d))
	}
	return errors.Join(errs...)
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
		errs = append(errs, p.unplumb())
	}
	for _, n := range c.nodes {
		if err := dataplane.Teardown(n.PinDir); err != nil {
			errs = append(errs, err)
		}
		if n.NetNS == "" {
			continue
		}
		if err := ip("link", "del", n.uplink); err != nil && linkExists(n.uplink) {
			errs = append(errs, err)
		}
		if err := ip("netns", "del", n.NetNS); err != nil && netnsExists(n.NetNS) {
			errs = append(errs, err)
		}
	}
	if err := ip("link", "del", c.bridge); err != nil && linkExists(c.bridge) {
		errs = append(errs, err)
	}
	// Deepest first: pods' cgroups may hold containers' and sit below
	// directories made for them.
	var dirs []string
	for _, p := range c.pods {
		dirs = append(dirs, p.Cgroup)
	}
	dirs = append(dirs, c.cgroups...)
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	for _, d := range slices.Compact(dirs) {
		killCgroup(d)
		errs = append(errs, removeCgroup(d))
	}
	for _, n := range c.nodes {
		errs = append(errs, removeCgroup(n.Cgroup))
	}
	errs = append(errs, removeCgroup(c.cgroup))
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
	}
	c.pods, c.nodes, c.procs, c.daemons, c.cgroups = nil, nil, nil, nil, nil
	return errors.Join(errs...)
}

// killCgroup kills every process in a cgroup (cgroup.kill, Linux 5.14+).
func killCgroup(dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
}

// killProcesses kills the processes of a cgroup one by one and waits
// until it is empty. Unlike cgroup.kill, it leaves the cgroup usable: on
// this kernel (6.18), a process later started into a cgroup that was
// killed through cgroup.kill (clone3 with CLONE_INTO_CGROUP, as Pod.Start
// does) is killed at once.
func killProcesses(dir string) error {
	for range 500 {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids := strings.Fields(string(data))
		if len(pids) == 0 {
			return nil
		}
		for _, f := range pids {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("processes of cgroup %s did not end", dir)
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
