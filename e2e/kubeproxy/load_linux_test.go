package kubeproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/e2e/kubeproxy"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// The simulated node (client namespace) and its pods (server namespace),
// joined by a veth.
var (
	clientAddr = netip.MustParsePrefix("192.168.77.1/24") // outside the pod CIDR: masqueraded
	serverAddr = netip.MustParsePrefix("192.168.77.2/24")
	vipRange   = netip.MustParsePrefix("10.96.0.0/12") // routed to the server namespace
	// The server namespace takes this part of the VIP range as its own,
	// so a VIP left without rules is refused at once instead of hanging.
	refusedVIPs = netip.MustParsePrefix("10.96.0.0/16")
	targetVIP   = netip.MustParseAddr("10.96.0.10")
	movedVIP    = netip.MustParseAddr("10.96.0.20")
	rejectVIP   = netip.MustParseAddr("10.97.0.1") // outside refusedVIPs: only a reject answers
	servicePort = uint16(80)
	targets     = endpoints("10.244.1.11", 3, 8080)
)

const (
	connections = 300
	// Each of 3 endpoints gets 100 of 300 on average, with a standard
	// deviation of sqrt(300·1/3·2/3) ≈ 8.2; 50 is 6 of them below.
	minPerEndpoint = 50
)

// For each mode, rules loaded into a node's namespace send connections to
// a VIP to all its endpoints, a reload drops the services left out, a
// service without endpoints is refused, and Flush leaves nothing behind.
func TestLoad(t *testing.T) {
	testenv.RequirePrivileged(t)
	testenv.Tool(t, "ip")
	for _, mode := range []kubeproxy.Mode{kubeproxy.IPTables, kubeproxy.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			tools := []string{"nft"}
			if mode == kubeproxy.IPTables {
				tools = []string{"iptables-restore", "iptables-save"}
			}
			for _, tool := range tools {
				testenv.Tool(t, tool)
			}
			testLoad(t, mode)
		})
	}
}

func testLoad(t *testing.T, mode kubeproxy.Mode) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	backend, err := kubeproxy.Backend(ctx, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backend: %s", backend)

	client, server := pair(t)
	counts := serve(t, server, targets)

	target := kubeproxy.Service{Namespace: "default", Name: "target", VIP: targetVIP, Port: servicePort, Protocol: "tcp", Endpoints: targets}
	noEndpoints := kubeproxy.Service{Namespace: "default", Name: "no-endpoints", VIP: rejectVIP, Port: servicePort, Protocol: "tcp"}
	first := append(fillers(1000), target, noEndpoints)
	took, err := kubeproxy.Load(ctx, client, mode, first, podCIDR)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d services in %v", len(first), took)

	vip := netip.AddrPortFrom(targetVIP, servicePort).String()
	got := map[string]int{}
	err = inNetNS(client, func() error {
		for i := range connections {
			from, err := ask(vip, 5*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d of %d to %s: %w", i+1, connections, vip, err)
			}
			got[from]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections to %s answered by %v", connections, vip, got)
	for i, ep := range targets {
		if got[ep.String()] < minPerEndpoint {
			t.Errorf("endpoint %s answered %d of %d connections, want at least %d", ep, got[ep.String()], connections, minPerEndpoint)
		}
		if n := counts[i].Load(); n != int64(got[ep.String()]) {
			t.Errorf("endpoint %s accepted %d connections but answered %d", ep, n, got[ep.String()])
		}
	}
	if len(got) != len(targets) {
		t.Errorf("answers from %v, want only the endpoints %v", got, targets)
	}

	// Nothing is behind rejectVIP's route; without the reject the SYN
	// would go unanswered.
	err = inNetNS(client, func() error {
		_, err := ask(netip.AddrPortFrom(rejectVIP, servicePort).String(), 3*time.Second)
		return err
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connection to %s (no endpoints): %v, want it refused", rejectVIP, err)
	}

	// Reload: the target moves to another VIP.
	moved := target
	moved.Name, moved.VIP = "moved", movedVIP
	second := append(fillers(1000), moved)
	if _, err := kubeproxy.Load(ctx, client, mode, second, podCIDR); err != nil {
		t.Fatal(err)
	}
	before := total(counts)
	err = inNetNS(client, func() error {
		if _, err := ask(netip.AddrPortFrom(movedVIP, servicePort).String(), 5*time.Second); err != nil {
			return fmt.Errorf("the moved service after reload: %w", err)
		}
		if from, err := ask(vip, time.Second); err == nil {
			return fmt.Errorf("the old VIP %s still answers after reload, from %s", vip, from)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if n := total(counts) - before; n != 1 {
		t.Errorf("endpoints accepted %d connections after the reload, want 1 (the moved service's)", n)
	}

	if err := kubeproxy.Flush(ctx, client, mode); err != nil {
		t.Fatal(err)
	}
	if mode == kubeproxy.IPTables {
		out := run(t, "ip", "netns", "exec", client, "iptables-save")
		if strings.Contains(out, "KUBE-") {
			t.Errorf("iptables-save after Flush still shows KUBE- chains:\n%s", out)
		}
	} else {
		out := run(t, "ip", "netns", "exec", client, "nft", "list", "tables")
		if strings.Contains(out, kubeproxy.Table) {
			t.Errorf("nft list tables after Flush: %s", out)
		}
	}
	// Flushing again finds nothing to remove and is no error.
	if err := kubeproxy.Flush(ctx, client, mode); err != nil {
		t.Error(err)
	}
}

// A tool's complaint reaches the caller, naming mode and namespace;
// invalid services never reach the tool.
func TestLoadErrors(t *testing.T) {
	testenv.RequirePrivileged(t)
	testenv.Tool(t, "ip")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	missing := testenv.UniqueName("kp-missing-")
	svcs := fillers(2)
	for _, mode := range []kubeproxy.Mode{kubeproxy.IPTables, kubeproxy.NFTables} {
		_, err := kubeproxy.Load(ctx, missing, mode, svcs, podCIDR)
		if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), string(mode)) {
			t.Errorf("load %s into a namespace that does not exist: %v, want an error naming both", mode, err)
		}
		bad := append(fillers(2), kubeproxy.Service{Namespace: "default", Name: "bad", VIP: netip.MustParseAddr("10.96.0.1"), Protocol: "tcp"})
		if _, err := kubeproxy.Load(ctx, missing, mode, bad, podCIDR); !errors.Is(err, kubeproxy.ErrInvalid) || !strings.Contains(err.Error(), "default/bad") {
			t.Errorf("load %s with port 0: %v, want ErrInvalid naming default/bad", mode, err)
		}
	}
	if _, err := kubeproxy.Load(ctx, missing, "ipvs", svcs, podCIDR); err == nil || !strings.Contains(err.Error(), "ipvs") {
		t.Errorf("load in mode ipvs: %v, want an error naming the mode", err)
	}
}

// Load time into a fresh namespace (run with -bench; needs root).
//
// nftables has no run of 100,000 services with two endpoints: each
// service's anonymous numgen map makes the kernel walk all the table's
// sets as it is added, so the load grows with the square of the number
// of services (about 15 s at 5,000 and 70 s at 10,000 on a 2-vCPU
// machine, hours at 100,000). Services with one endpoint need no map and
// show the rest of the cost.
func BenchmarkLoad(b *testing.B) {
	testenv.RequirePrivileged(b)
	testenv.Tool(b, "ip")
	for _, c := range []struct {
		mode             kubeproxy.Mode
		services, perSvc int
	}{
		{kubeproxy.IPTables, 1_000, 2},
		{kubeproxy.IPTables, 10_000, 2},
		{kubeproxy.IPTables, 100_000, 2},
		{kubeproxy.NFTables, 1_000, 2},
		{kubeproxy.NFTables, 10_000, 2},
		{kubeproxy.NFTables, 100_000, 1},
	} {
		svcs := fillers(c.services)
		for i := range svcs {
			svcs[i].Endpoints = svcs[i].Endpoints[:c.perSvc]
		}
		b.Run(fmt.Sprintf("%s/%dx%d", c.mode, c.services, c.perSvc), func(b *testing.B) {
			ns := netns(b, "kpb-")
			ctx := context.Background()
			var took time.Duration
			for b.Loop() {
				t, err := kubeproxy.Load(ctx, ns, c.mode, svcs, podCIDR)
				if err != nil {
					b.Fatal(err)
				}
				took += t
			}
			b.ReportMetric(took.Seconds()/float64(b.N), "tool-s/op")
			start := time.Now()
			if err := kubeproxy.Flush(ctx, ns, c.mode); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(time.Since(start).Seconds(), "flush-s")
		})
	}
}

// pair creates a client and a server network namespace joined by a veth,
// both removed at cleanup.
func pair(t *testing.T) (client, server string) {
	t.Helper()
	client, server = netns(t, "kpc-"), netns(t, "kps-")
	run(t, "ip", "link", "add", "eth0", "netns", client, "type", "veth", "peer", "name", "eth0", "netns", server)
	run(t, "ip", "-n", client, "addr", "add", clientAddr.String(), "dev", "eth0")
	run(t, "ip", "-n", server, "addr", "add", serverAddr.String(), "dev", "eth0")
	for _, ep := range targets {
		run(t, "ip", "-n", server, "addr", "add", ep.Addr().String()+"/32", "dev", "eth0")
	}
	for _, ns := range []string{client, server} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	gw := serverAddr.Addr().String()
	run(t, "ip", "-n", client, "route", "add", podCIDR.String(), "via", gw)
	run(t, "ip", "-n", client, "route", "add", vipRange.String(), "via", gw)
	run(t, "ip", "-n", server, "route", "add", "local", refusedVIPs.String(), "dev", "lo")
	return client, server
}

// netns creates a network namespace named prefix plus a random suffix and
// deletes it at cleanup.
func netns(tb testing.TB, prefix string) string {
	tb.Helper()
	name := testenv.UniqueName(prefix)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	return name
}

func run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// serve listens on each of eps in network namespace ns and answers every
// connection with the address it was accepted on, then closes it (the
// server closing first keeps TIME_WAIT off the client's ports). counts[i]
// is how many connections eps[i] accepted.
func serve(t *testing.T, ns string, eps []netip.AddrPort) []atomic.Int64 {
	t.Helper()
	counts := make([]atomic.Int64, len(eps))
	var lns []net.Listener
	err := inNetNS(ns, func() error {
		for _, ep := range eps {
			ln, err := net.Listen("tcp", ep.String())
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
	if err != nil {
		t.Fatalf("listen in netns %s: %v", ns, err)
	}
	for i, ln := range lns {
		wg.Go(func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				counts[i].Add(1)
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(conn, eps[i].String())
				conn.Close()
			}
		})
	}
	return counts
}

func total(counts []atomic.Int64) int64 {
	var n int64
	for i := range counts {
		n += counts[i].Load()
	}
	return n
}

// ask connects to address and returns what the server says before closing.
func ask(address string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return string(b), nil
}

// inNetNS runs fn on an OS thread switched into the named network
// namespace; sockets fn creates belong to that namespace. If the thread
// cannot be switched back it stays locked, so Go ends it with fn's
// goroutine rather than run anything else in the wrong namespace.
func inNetNS(name string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := switchAndRun(name, fn)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

func switchAndRun(name string, fn func() error) (restored bool, _ error) {
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return true, err
	}
	defer orig.Close()
	ns, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		return true, err
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter netns %s: %w", name, err)
	}
	err = fn()
	return unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil, err
}
