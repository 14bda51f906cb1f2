package dataplane_test

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// rig is one privileged test's world: a cgroup subtree whose "managed" child
// is routed by a dataplane and whose "outside" child is not.
type rig struct {
	t        testing.TB
	managed  string
	outside  string
	pinDir   string
	dp       *dataplane.Dataplane
	backends map[string]netip.AddrPort // name -> listen address
}

func newRig(t testing.TB, caps dataplane.Capacity) *rig {
	testenv.RequirePrivileged(t)
	root := testenv.Cgroup(t, "", testenv.UniqueName("sluice-test-"))
	r := &rig{
		t:        t,
		managed:  testenv.Cgroup(t, root, "managed"),
		outside:  testenv.Cgroup(t, root, "outside"),
		pinDir:   testenv.PinDir(t),
		backends: make(map[string]netip.AddrPort),
	}
	// Registered first so it runs last, after every Close.
	t.Cleanup(func() {
		if err := dataplane.Teardown(r.pinDir); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	r.dp = r.open(caps)
	testenv.EnterCgroup(t, r.managed)
	return r
}

func (r *rig) open(caps dataplane.Capacity) *dataplane.Dataplane {
	r.t.Helper()
	dp, err := dataplane.Open(dataplane.Options{PinDir: r.pinDir, Cgroup: r.managed, Capacity: caps})
	if err != nil {
		r.t.Fatalf("open dataplane: %v", err)
	}
	r.t.Cleanup(func() { dp.Close() })
	return dp
}

func (r *rig) apply(s model.State) {
	r.t.Helper()
	if err := r.dp.Apply(s); err != nil {
		r.t.Fatalf("apply: %v", err)
	}
}

// tcpBackend listens on addr (port 0 picks one) and answers every request
// line with its name, then closes (the server closes first).
func (r *rig) tcpBackend(name, addr string) model.Endpoint {
	r.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					_, _ = c.Write([]byte(name + "\n"))
				}
			}()
		}
	}()
	return r.endpoint(name, ln.Addr().String())
}

// udpBackend answers every datagram with its name.
func (r *rig) udpBackend(name, addr string) model.Endpoint {
	r.t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	return r.endpoint(name, pc.LocalAddr().String())
}

func (r *rig) endpoint(name, addr string) model.Endpoint {
	ap := netip.MustParseAddrPort(addr)
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	r.backends[name] = ap
	return model.Endpoint{Addr: ap.Addr(), Port: ap.Port()}
}

// request dials addr over TCP, sends one line and returns the answer and
// the peer address the socket reports (getpeername).
func request(addr string) (answer string, peer netip.AddrPort, err error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return "", peer, err
	}
	defer c.Close()
	peer = netip.MustParseAddrPort(c.RemoteAddr().String())
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "", peer, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", peer, err
	}
	return strings.TrimSuffix(line, "\n"), peer, nil
}

// tally makes n requests to addr and counts answers; any error fails the test.
func tally(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := make(map[string]int)
	for i := range n {
		name, _, err := request(addr)
		if err != nil {
			t.Fatalf("request %d to %s: %v", i, addr, err)
		}
		got[name]++
	}
	return got
}

// load keeps requesting addr from workers goroutines until stopped, and
// records every failure and every answer.
type load struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	ok       int
	failures []error
	answers  map[string]int
}

func startLoad(addr string, workers int) *load {
	l := &load{stop: make(chan struct{}), answers: make(map[string]int)}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				name, _, err := request(addr)
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, err)
				} else {
					l.ok++
					l.answers[name]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) finish() (ok int, failures []error, answers map[string]int) {
	close(l.stop)
	l.wg.Wait()
	return l.ok, l.failures, l.answers
}

// attachedPrograms counts programs attached to cgroup dir for every hook the
// dataplane uses.
func attachedPrograms(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, at := range []ebpf.AttachType{
		ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
		ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
		ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg,
		ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername,
	} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %v programs: %v", at, err)
		}
		n += len(res.Programs)
	}
	return n
}

// bpfFDs counts this process's open BPF object descriptors.
func bpfFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, "anon_inode:bpf") {
			n++
		}
	}
	return n
}
