package dataplane_test

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func svc(name, vip string, port uint16, proto model.Protocol, eps ...model.Endpoint) model.Service {
	return model.Service{Name: name, VIP: netip.MustParseAddr(vip), Port: port, Protocol: proto, Endpoints: eps}
}

func TestTCPv4RoutesToBackendAndReportsVIP(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a", "127.0.0.1:0")
	r.apply(model.State{Services: []model.Service{svc("web", "10.96.0.10", 80, model.TCP, a)}})

	name, peer, err := request("10.96.0.10:80")
	if err != nil {
		t.Fatalf("request to VIP: %v", err)
	}
	if name != "a" {
		t.Errorf("answered by %q, want a", name)
	}
	if want := netip.MustParseAddrPort("10.96.0.10:80"); peer != want {
		t.Errorf("getpeername = %v, want the VIP %v (backend is %v)", peer, want, r.backends["a"])
	}
}

func TestTCPv6RoutesToBackendAndReportsVIP(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a6", "[::1]:0")
	r.apply(model.State{Services: []model.Service{svc("web6", "fd00:96::10", 8080, model.TCP, a)}})

	name, peer, err := request("[fd00:96::10]:8080")
	if err != nil {
		t.Fatalf("request to VIP: %v", err)
	}
	if name != "a6" {
		t.Errorf("answered by %q, want a6", name)
	}
	if want := netip.MustParseAddrPort("[fd00:96::10]:8080"); peer != want {
		t.Errorf("getpeername = %v, want the VIP %v", peer, want)
	}
}

// A dual-stack IPv6 socket dialing the v4-mapped form of an IPv4 VIP is
// routed like an IPv4 socket and sees the mapped VIP as its peer.
func TestV4MappedDialFromIPv6Socket(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a", "127.0.0.1:0")
	r.apply(model.State{Services: []model.Service{svc("web", "10.96.0.11", 80, model.TCP, a)}})

	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	vip := netip.MustParseAddr("::ffff:10.96.0.11")
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: vip.As16(), Port: 80}); err != nil {
		t.Fatalf("connect to v4-mapped VIP: %v", err)
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatal(err)
	}
	got := sa.(*unix.SockaddrInet6)
	if netip.AddrFrom16(got.Addr) != vip || got.Port != 80 {
		t.Errorf("getpeername = %v:%d, want %v:80", netip.AddrFrom16(got.Addr), got.Port, vip)
	}
}

func TestUDPUnconnectedReplyComesFromVIP(t *testing.T) {
	for _, tc := range []struct{ name, vip, backend, network string }{
		{"v4", "10.96.0.53", "127.0.0.1:0", "udp4"},
		{"v6", "fd00:96::53", "[::1]:0", "udp6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, dataplane.Capacity{})
			b := r.udpBackend("dns-"+tc.name, tc.backend)
			r.apply(model.State{Services: []model.Service{svc("dns", tc.vip, 53, model.UDP, b)}})

			conn, err := net.ListenUDP(tc.network, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			vip := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.vip), 53))
			if _, err := conn.WriteToUDP([]byte("q"), vip); err != nil {
				t.Fatalf("send to VIP: %v", err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 64)
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("reply: %v", err)
			}
			if string(buf[:n]) != "dns-"+tc.name {
				t.Errorf("reply %q, want from dns-%s", buf[:n], tc.name)
			}
			if got := netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); got != vip.AddrPort() {
				t.Errorf("reply source %v, want the VIP %v (backend %v)", got, vip, r.backends["dns-"+tc.name])
			}
		})
	}
}

func TestUDPConnectedSeesVIP(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	b := r.udpBackend("u", "127.0.0.1:0")
	r.apply(model.State{Services: []model.Service{svc("udp", "10.96.0.54", 5353, model.UDP, b)}})

	conn, err := net.Dial("udp4", "10.96.0.54:5353")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.RemoteAddr().String(); got != "10.96.0.54:5353" {
		t.Errorf("getpeername = %s, want the VIP", got)
	}
	if _, err := conn.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, from, err := conn.(*net.UDPConn).ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if string(buf[:n]) != "u" || from.String() != "10.96.0.54:5353" {
		t.Errorf("reply %q from %v, want \"u\" from the VIP", buf[:n], from)
	}
}

// Weighted choice: 3000 connections over weights 1:3:6. The counts are
// compared with a chi-square goodness-of-fit test (2 degrees of freedom);
// 18.42 is the critical value at p = 0.0001, so a correct implementation
// fails this test once in ten thousand runs.
func TestWeightedDistribution(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	weights := map[string]uint32{"w1": 1, "w3": 3, "w6": 6}
	var eps []model.Endpoint
	for name, w := range weights {
		ep := r.tcpBackend(name, "127.0.0.1:0")
		ep.Weight = w
		eps = append(eps, ep)
	}
	r.apply(model.State{Services: []model.Service{svc("weighted", "10.96.1.1", 80, model.TCP, eps...)}})

	const n = 3000
	got := tally(t, "10.96.1.1:80", n)
	chi2 := 0.0
	for name, w := range weights {
		expected := float64(n) * float64(w) / 10
		d := float64(got[name]) - expected
		chi2 += d * d / expected
	}
	t.Logf("counts %v, chi-square %.2f", got, chi2)
	if chi2 > 18.42 {
		t.Errorf("distribution %v does not follow weights 1:3:6 (chi-square %.2f > 18.42)", got, chi2)
	}
}

func TestOnlyUsableEndpointsAreChosen(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	healthy := r.tcpBackend("healthy", "127.0.0.1:0")
	healthy.Health = model.HealthHealthy
	unknown := r.tcpBackend("unknown", "127.0.0.1:0")
	sick := r.tcpBackend("sick", "127.0.0.1:0")
	sick.Health = model.HealthUnhealthy
	draining := r.tcpBackend("draining", "127.0.0.1:0")
	draining.Health = model.HealthDraining
	r.apply(model.State{Services: []model.Service{
		svc("mixed", "10.96.1.2", 80, model.TCP, healthy, unknown, sick, draining)}})

	got := tally(t, "10.96.1.2:80", 400)
	if got["sick"] != 0 || got["draining"] != 0 {
		t.Errorf("unusable endpoints chosen: %v", got)
	}
	if got["healthy"] == 0 || got["unknown"] == 0 {
		t.Errorf("usable endpoints not all chosen over 400 connections: %v", got)
	}
}

func TestPriorityFailover(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	p0a := r.tcpBackend("p0a", "127.0.0.1:0")
	p0b := r.tcpBackend("p0b", "127.0.0.1:0")
	p1 := r.tcpBackend("p1", "127.0.0.1:0")
	p1.Priority = 1
	p2 := r.tcpBackend("p2", "127.0.0.1:0")
	p2.Priority = 2

	state := func(p0aHealth, p0bHealth model.Health) model.State {
		a, b := p0a, p0b
		a.Health, b.Health = p0aHealth, p0bHealth
		return model.State{Services: []model.Service{svc("prio", "10.96.1.3", 80, model.TCP, a, b, p1, p2)}}
	}

	r.apply(state(model.HealthHealthy, model.HealthUnhealthy))
	if got := tally(t, "10.96.1.3:80", 100); got["p0a"] != 100 {
		t.Errorf("priority 0 has a healthy endpoint, yet got %v", got)
	}
	r.apply(state(model.HealthUnhealthy, model.HealthDraining))
	if got := tally(t, "10.96.1.3:80", 100); got["p1"] != 100 {
		t.Errorf("priority 0 has no usable endpoint: want all on p1 (priority 1 only), got %v", got)
	}
	r.apply(state(model.HealthUnhealthy, model.HealthHealthy))
	if got := tally(t, "10.96.1.3:80", 100); got["p0b"] != 100 {
		t.Errorf("priority 0 recovered: want all on p0b, got %v", got)
	}
}

func TestServiceWithoutEndpointsRefusesAtOnce(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	r.apply(model.State{Services: []model.Service{
		svc("empty-tcp", "10.96.2.1", 80, model.TCP),
		svc("empty-udp", "10.96.2.1", 53, model.UDP),
	}})

	// A timeout here would mean a SYN was sent into nowhere; the refusal
	// must come from connect itself.
	_, _, err := request("10.96.2.1:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("TCP connect to empty service: err = %v, want ECONNREFUSED", err)
	}
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.WriteToUDP([]byte("q"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.96.2.1:53")))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP send to empty service: err = %v, want ECONNREFUSED", err)
	}
	st, err := r.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.NoBackend < 2 {
		t.Errorf("NoBackend counter = %d, want >= 2", st.NoBackend)
	}
}

// Sockets of a cgroup outside the managed subtree are left alone: a client
// there reaches whatever really listens on the VIP address (a decoy here).
func TestOutsideManagedCgroupIsUntouched(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("backend", "127.0.0.1:0")
	if out, err := exec.Command("ip", "addr", "add", "10.96.3.1/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("add decoy address: %v: %s", err, out)
	}
	r.tcpBackend("decoy", "10.96.3.1:80")
	r.apply(model.State{Services: []model.Service{svc("web", "10.96.3.1", 80, model.TCP, a)}})

	if name, _, err := request("10.96.3.1:80"); err != nil || name != "backend" {
		t.Errorf("managed client: answer %q, err %v; want the backend", name, err)
	}
	testenv.EnterCgroup(t, r.outside)
	if name, _, err := request("10.96.3.1:80"); err != nil || name != "decoy" {
		t.Errorf("outside client: answer %q, err %v; want the decoy on the real address", name, err)
	}
}

func TestRejectedStateKeepsPreviousInForce(t *testing.T) {
	r := newRig(t, dataplane.Capacity{Services: 2, Backends: 3})
	a := r.tcpBackend("a", "127.0.0.1:0")
	b := r.tcpBackend("b", "127.0.0.1:0")
	good := model.State{Services: []model.Service{
		svc("one", "10.96.4.1", 80, model.TCP, a),
		svc("two", "10.96.4.2", 80, model.TCP, b),
	}}
	r.apply(good)
	before := r.dp.Status()

	c := r.tcpBackend("c", "127.0.0.1:0")
	for _, tc := range []struct {
		name  string
		state model.State
		class error
		names string // the offending entry the error must name
	}{
		{"duplicate VIP", model.State{Services: []model.Service{
			svc("one", "10.96.4.1", 80, model.TCP, c),
			svc("clash", "10.96.4.1", 80, model.TCP, a),
		}}, model.ErrInvalidState, `service "clash"`},
		{"too many services", model.State{Services: []model.Service{
			svc("one", "10.96.4.1", 80, model.TCP, c),
			svc("two", "10.96.4.2", 80, model.TCP, b),
			svc("three", "10.96.4.3", 80, model.TCP, a),
		}}, model.ErrCapacity, `service "three"`},
		{"too many backends", model.State{Services: []model.Service{
			svc("one", "10.96.4.1", 80, model.TCP, c, b),
			svc("two", "10.96.4.2", 80, model.TCP, a, b),
		}}, model.ErrCapacity, `service "two"`},
		{"family mismatch", model.State{Services: []model.Service{
			svc("one", "10.96.4.1", 80, model.TCP, c),
			svc("v6", "fd00::1", 80, model.TCP, a),
		}}, model.ErrInvalidState, `service "v6"`},
	} {
		err := r.dp.Apply(tc.state)
		if !errors.Is(err, tc.class) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.class)
			continue
		}
		var ee *model.EntryError
		if !errors.As(err, &ee) || !strings.Contains(ee.Entry, tc.names) {
			t.Errorf("%s: error %q does not name %s", tc.name, err, tc.names)
		}
		if got := tally(t, "10.96.4.1:80", 20); got["a"] != 20 {
			t.Errorf("%s: previous state not in force for service one: %v", tc.name, got)
		}
		if got := tally(t, "10.96.4.2:80", 20); got["b"] != 20 {
			t.Errorf("%s: previous state not in force for service two: %v", tc.name, got)
		}
	}
	if after := r.dp.Status(); after != before {
		t.Errorf("rejected states changed the maps: status %+v -> %+v", before, after)
	}
}

// Flipping between two states under load: state A routes the VIP to two
// backends, state B to five others, with different weights and service ids
// shuffled by services that exist in only one state. A program that read the
// service from one state and its backends from the other would miss a
// backend (counted in BackendMiss, and the connection would not reach any
// backend) or pick a backend of neither set.
func TestApplyIsAtomicUnderLoad(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	var aEPs, bEPs []model.Endpoint
	for i, name := range []string{"a0", "a1"} {
		ep := r.tcpBackend(name, "127.0.0.1:0")
		ep.Weight = uint32(10 * (i + 1))
		aEPs = append(aEPs, ep)
	}
	for _, name := range []string{"b0", "b1", "b2", "b3", "b4"} {
		bEPs = append(bEPs, r.tcpBackend(name, "127.0.0.1:0"))
	}
	other := r.tcpBackend("other", "127.0.0.1:0")
	stateA := model.State{Services: []model.Service{
		svc("only-a", "10.96.5.9", 80, model.TCP, other),
		svc("flip", "10.96.5.1", 80, model.TCP, aEPs...),
	}}
	stateB := model.State{Services: []model.Service{
		svc("flip", "10.96.5.1", 80, model.TCP, bEPs...),
		svc("only-b", "10.96.5.8", 80, model.TCP, other, aEPs[0]),
	}}
	r.apply(stateA)

	l := startLoad("10.96.5.1:80", 4)
	const flips = 300
	for i := range flips {
		s := stateB
		if i%2 == 1 {
			s = stateA
		}
		r.apply(s)
		time.Sleep(time.Millisecond)
	}
	ok, failures, answers := l.finish()

	t.Logf("%d connections during %d flips: %v", ok, flips, answers)
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed during flips, first: %v", len(failures), ok+len(failures), failures[0])
	}
	for name := range answers {
		switch name {
		case "a0", "a1", "b0", "b1", "b2", "b3", "b4":
		default:
			t.Errorf("connection answered by %q, a backend of neither state", name)
		}
	}
	if answers["a0"]+answers["a1"] == 0 || answers["b0"]+answers["b1"]+answers["b2"]+answers["b3"]+answers["b4"] == 0 {
		t.Errorf("load did not see both states: %v", answers)
	}
	st, err := r.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.BackendMiss != 0 {
		t.Errorf("programs saw a service without its backends %d times", st.BackendMiss)
	}
}

// Restart: the first process closes, the datapath keeps routing with no
// process holding any BPF object; a second process adopts the pins without a
// gap and without rewriting unchanged entries; teardown removes everything.
func TestRestartAdoptsPinsAndTeardownCleansUp(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a", "127.0.0.1:0")
	b := r.tcpBackend("b", "127.0.0.1:0")
	s1 := model.State{Services: []model.Service{svc("web", "10.96.6.1", 80, model.TCP, a)}}
	r.apply(s1)

	l := startLoad("10.96.6.1:80", 2)
	if err := r.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if n := bpfFDs(t); n != 0 {
		t.Errorf("after Close the process still holds %d BPF objects", n)
	}
	if got := tally(t, "10.96.6.1:80", 50); got["a"] != 50 {
		t.Errorf("with no process holding the dataplane, routing gave %v", got)
	}

	dp2 := r.open(dataplane.Capacity{})
	if err := dp2.Apply(s1); err != nil {
		t.Fatal(err)
	}
	if st := dp2.Status(); st.EntriesWritten != 0 || st.Services != 1 {
		t.Errorf("adopting process rewrote unchanged state: %+v", st)
	}
	if err := dp2.Apply(model.State{Services: []model.Service{svc("web", "10.96.6.1", 80, model.TCP, b)}}); err != nil {
		t.Fatal(err)
	}
	if got := tally(t, "10.96.6.1:80", 20); got["b"] != 20 {
		t.Errorf("adopting process's new state not in force: %v", got)
	}
	ok, failures, _ := l.finish()
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed across the restart, first: %v", len(failures), ok+len(failures), failures[0])
	}

	if err := dp2.Teardown(); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	if n := attachedPrograms(t, r.managed); n != 0 {
		t.Errorf("%d programs still attached to the managed cgroup after teardown", n)
	}
	if _, _, err := request("10.96.6.1:80"); err == nil {
		t.Error("VIP still routed after teardown")
	}
	if n := bpfFDs(t); n != 0 {
		t.Errorf("after teardown the process still holds %d BPF objects", n)
	}
}

func TestSecondOwnerIsRefused(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	_, err := dataplane.Open(dataplane.Options{PinDir: r.pinDir, Cgroup: r.managed})
	if !errors.Is(err, dataplane.ErrLocked) {
		t.Errorf("second Open on a held pin directory: err = %v, want ErrLocked", err)
	}
}

func TestCapacityChangeOfPinnedMapsIsExplained(t *testing.T) {
	r := newRig(t, dataplane.Capacity{Services: 8})
	r.dp.Close()
	_, err := dataplane.Open(dataplane.Options{PinDir: r.pinDir, Cgroup: r.managed, Capacity: dataplane.Capacity{Services: 16}})
	if !errors.Is(err, dataplane.ErrIncompatiblePins) {
		t.Errorf("reopening with another capacity: err = %v, want ErrIncompatiblePins", err)
	}
}

// A process that died half way through an Apply leaves a half-written
// inactive generation. The next owner repairs it on adoption, so its first
// flip does not publish the debris.
func TestAdoptionRepairsHalfWrittenGeneration(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a", "127.0.0.1:0")
	r.tcpBackend("debris", "127.0.0.1:0")
	other := r.tcpBackend("other", "127.0.0.1:0")
	s1 := model.State{Services: []model.Service{svc("web", "10.96.7.1", 80, model.TCP, a)}}
	r.apply(s1)
	r.dp.Close()

	vip := netip.MustParseAddrPort("10.96.7.1:80")
	if err := dataplane.WriteInactiveForTest(r.pinDir, vip, r.backends["debris"]); err != nil {
		t.Fatal(err)
	}
	if err := dataplane.WriteInactiveForTest(r.pinDir, netip.MustParseAddrPort("10.96.7.2:80"), r.backends["debris"]); err != nil {
		t.Fatal(err)
	}

	dp2 := r.open(dataplane.Capacity{})
	// web is unchanged, so this Apply writes only the new service; the flip
	// must not bring the debris for web or for 10.96.7.2 with it.
	s2 := model.State{Services: append(s1.Services, svc("new", "10.96.7.3", 80, model.TCP, other))}
	if err := dp2.Apply(s2); err != nil {
		t.Fatal(err)
	}
	if got := tally(t, "10.96.7.1:80", 50); got["a"] != 50 {
		t.Errorf("web after adoption and one apply: %v, want all on a", got)
	}
	if name, _, err := request("10.96.7.2:80"); err == nil {
		t.Errorf("a service that exists only in the debris answered (%s)", name)
	}
	if got := tally(t, "10.96.7.3:80", 10); got["other"] != 10 {
		t.Errorf("new service: %v", got)
	}
}

// A backend entry that no service owns (left by a bug or an older version)
// is removed when a new process adopts the pins.
func TestAdoptionRemovesStrayBackends(t *testing.T) {
	r := newRig(t, dataplane.Capacity{})
	a := r.tcpBackend("a", "127.0.0.1:0")
	r.apply(model.State{Services: []model.Service{svc("web", "10.96.8.1", 80, model.TCP, a)}})
	r.dp.Close()
	if err := dataplane.WriteStrayForTest(r.pinDir); err != nil {
		t.Fatal(err)
	}
	r.open(dataplane.Capacity{})
	if n, err := dataplane.StraysForTest(r.pinDir); err != nil || n != 0 {
		t.Errorf("%d stray backend entries left after adoption (err %v)", n, err)
	}
	if got := tally(t, "10.96.8.1:80", 10); got["a"] != 10 {
		t.Errorf("routing after adoption: %v", got)
	}
}
