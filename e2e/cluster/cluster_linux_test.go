package cluster_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// newCluster makes a cluster for t, closed when t ends unless closeAndCheck
// closed it first; closeAndCheck fails t if Close fails or leaves anything
// of the cluster behind.
func newCluster(t *testing.T) (*cluster.Cluster, func()) {
	t.Helper()
	testenv.RequirePrivileged(t)
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			c.Close()
		}
	})
	return c, func() {
		t.Helper()
		closed = true
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if left, err := cluster.Leftovers(c.ID); err != nil || len(left) > 0 {
			t.Errorf("after Close: %v, %v", left, err)
		}
	}
}

// Leftovers finds every object of a live cluster, and none once it is
// closed.
func TestLeftovers(t *testing.T) {
	c, closeAndCheck := newCluster(t)
	n, err := c.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"p0", "p1"} {
		if _, err := n.AddPod(name, netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)})); err != nil {
			t.Fatal(err)
		}
	}
	// An agent would pin here; the dataplane makes the directory.
	if err := os.Mkdir(n.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	left, err := cluster.Leftovers(c.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/run/netns/sluice-" + c.ID + "-p0", "/run/netns/sluice-" + c.ID + "-p1", n.PinDir, c.Dir,
		filepath.Dir(n.Cgroup), // the cluster's cgroup, holding the nodes'
		"link slbr" + c.ID,
	}
	for _, w := range want {
		if !slices.Contains(left, w) {
			t.Errorf("Leftovers of a live cluster lacks %s: %v", w, left)
		}
	}
	veths := 0
	for _, l := range left {
		if strings.HasPrefix(l, "link slv") {
			veths++
		}
	}
	if veths != 2 || len(left) != len(want)+veths {
		t.Errorf("Leftovers of a live cluster: %v; want %v and 2 veths", left, want)
	}

	closeAndCheck()
}

// Pod.Dial connects from the pod's network namespace, and leaves the
// processes started in pods alone: they die with the thread that started
// them (Pdeathsig), and Dial must not end threads.
func TestPodDial(t *testing.T) {
	testenv.RequirePrivileged(t)
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	n, err := c.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := n.AddPod("p0", netip.MustParseAddr("10.244.1.10"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var procs []chan error
	for range 4 {
		cmd := pod.Command(ctx, "sleep", "60")
		if err := pod.Start(cmd); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		procs = append(procs, exited)
	}
	for range 20 {
		// Nothing listens: refused in the pod's namespace, where the
		// address is; unreachable from this process's.
		_, err := pod.Dial(ctx, "tcp", "10.244.1.10:1")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial the pod's own address from the pod: %v, want connection refused", err)
		}
	}
	time.Sleep(200 * time.Millisecond) // a death signal is delivered at once; give the exit time to show
	for i, exited := range procs {
		select {
		case err := <-exited:
			t.Errorf("process %d in the pod exited while the test dialed: %v", i, err)
		default:
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if err := pod.WaitListening(short, "10.244.1.10:1"); err == nil {
		t.Error("WaitListening on a port nothing listens on succeeded")
	}
}

// Pods of routed nodes reach each other and the bridge's pods through
// their nodes' namespaces, by their extra addresses too, and again after
// Renew; Close leaves nothing of the nodes.
func TestRoutedNodes(t *testing.T) {
	c, closeAndCheck := newCluster(t)
	var err error
	pods := map[string]*cluster.Pod{}
	for _, spec := range []struct {
		node, pod, addr string
		routed          bool
	}{
		{"a", "a1", "10.244.1.10", true},
		{"a", "a2", "10.244.1.11", true},
		{"b", "b1", "10.244.2.10", true},
		{"c", "c1", "10.244.3.10", false},
	} {
		var n *cluster.Node
		for _, p := range pods {
			if p.Node.Name == spec.node {
				n = p.Node
			}
		}
		if n == nil {
			if spec.routed {
				n, err = c.AddRoutedNode(spec.node)
			} else {
				n, err = c.AddNode(spec.node)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if pods[spec.pod], err = n.AddPod(spec.pod, netip.MustParseAddr(spec.addr)); err != nil {
			t.Fatal(err)
		}
	}
	if pods["a1"].Node.NetNS == "" || !cluster.RoutedNodeAddrs.Contains(pods["b1"].Node.Addr) {
		t.Fatalf("routed nodes: netns %q, address %s", pods["a1"].Node.NetNS, pods["b1"].Node.Addr)
	}
	if _, err := pods["c1"].Node.AddPod("v6", netip.MustParseAddr("fd00::1")); err != nil {
		t.Fatal(err) // bridged nodes keep taking IPv6 pods
	}
	if _, err := pods["a1"].Node.AddPod("a6", netip.MustParseAddr("fd00::2")); err == nil || !strings.Contains(err.Error(), "IPv4") {
		t.Fatalf("an IPv6 pod on a routed node: %v", err)
	}
	extra := netip.MustParseAddr("10.244.2.11")
	if err := pods["b1"].AddAddr(extra); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Nothing listens on port 1: a refusal is the destination's own
	// answer, so the path there and back works.
	reach := func(from, to string) {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if _, err := pods[from].Dial(short, "tcp", to+":1"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s → %s: %v, want connection refused", from, to, err)
		}
	}
	check := func() {
		for _, pair := range [][2]string{
			{"a1", "10.244.1.11"}, // same routed node
			{"a1", "10.244.2.10"}, // another routed node
			{"a1", extra.String()},
			{"a1", "10.244.3.10"}, // a bridged pod
			{"c1", "10.244.1.10"}, // and back, by proxy ARP
			{"c1", extra.String()},
			{"b1", "10.244.1.10"},
		} {
			reach(pair[0], pair[1])
		}
	}
	check()

	// Renew: a fresh namespace, the same addresses and cgroup; what ran in
	// the pod is gone.
	sleeper := pods["b1"].Command(ctx, "sleep", "60")
	if err := pods["b1"].Start(sleeper); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat("/run/netns/" + pods["b1"].NetNS)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"b1", "a1", "c1"} {
		if err := pods[name].Renew(); err != nil {
			t.Fatal(err)
		}
	}
	if err := sleeper.Wait(); err == nil {
		t.Error("a process of the renewed pod lived on")
	}
	after, err := os.Stat("/run/netns/" + pods["b1"].NetNS)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Error("Renew kept the pod's network namespace")
	}
	// The pod's cgroup takes new processes.
	again := pods["b1"].Command(ctx, "sleep", "60")
	if err := pods["b1"].Start(again); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- again.Wait() }()
	select {
	case err := <-exited:
		t.Errorf("a process started in the renewed pod ended at once: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	check()

	closeAndCheck()
}
